//! `kubectl zdt <TAB>`: kubectl (1.26 and later) completes a plugin's arguments by running
//! `kubectl_complete-zdt WORD...` (the words after `zdt`, the last one being completed, maybe
//! empty) and reading Cobra's completion format: one candidate a line, a tab and a
//! description after it, then `:DIRECTIVE`. `deploy/kubectl_complete-zdt` hands the words to
//! `kubectl-zdt __complete`, answered here from the clap definition, so completion always
//! matches the flags. Hidden commands and flags are never offered.

use clap::{Arg, Command};

/// Cobra's directives (`cobra.ShellCompDirective`).
const NO_FILE_COMP: u8 = 4;
const DEFAULT: u8 = 0;

/// The candidates for the last of `words` and the directive, in Cobra's format.
pub fn complete(mut root: Command, words: &[String]) -> String {
    root.build();
    let (current, before) = match words.split_last() {
        Some((current, before)) => (current.as_str(), before),
        None => ("", &[][..]),
    };
    let mut cmd = &root;
    let mut awaiting: Option<&Arg> = None;
    let mut only_positionals = false;
    for word in before {
        if awaiting.take().is_some() {
            continue;
        }
        if !only_positionals && word == "--" {
            only_positionals = true;
        } else if !only_positionals && word.starts_with('-') && !word.contains('=') {
            awaiting = find_option(cmd, word).filter(|a| takes_value(a));
        } else if let Some(sub) = cmd.find_subcommand(word) {
            cmd = sub;
        }
    }
    let mut out = String::new();
    let directive = if let Some(arg) = awaiting {
        values(arg, "", current, &mut out)
    } else if let Some((flag, value)) = current
        .strip_prefix("--")
        .and_then(|c| c.split_once('='))
        .filter(|_| !only_positionals)
    {
        match find_option(cmd, &format!("--{flag}")) {
            Some(arg) => values(arg, &format!("--{flag}="), value, &mut out),
            None => NO_FILE_COMP,
        }
    } else if current.starts_with('-') && !only_positionals {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            let names = arg
                .get_long()
                .map(|l| format!("--{l}"))
                .into_iter()
                .chain(arg.get_short().map(|s| format!("-{s}")));
            let about = arg
                .get_help()
                .map(|h| first_line(&h.to_string()))
                .unwrap_or_default();
            for name in names.filter(|n| n.starts_with(current)) {
                candidate(&mut out, &name, &about);
            }
        }
        NO_FILE_COMP
    } else if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name().starts_with(current) {
                let about = sub
                    .get_about()
                    .map(|h| first_line(&h.to_string()))
                    .unwrap_or_default();
                candidate(&mut out, sub.get_name(), &about);
            }
        }
        NO_FILE_COMP
    } else {
        match cmd
            .get_positionals()
            .find(|a| !a.get_possible_values().is_empty())
        {
            Some(arg) => values(arg, "", current, &mut out),
            None => DEFAULT,
        }
    };
    out.push_str(&format!(":{directive}\n"));
    out
}

/// The option `word` names in `cmd` (`--long`, or `-s`), hidden ones included: what the user
/// typed is honoured, only never offered.
fn find_option<'a>(cmd: &'a Command, word: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| {
        if let Some(long) = word.strip_prefix("--") {
            a.get_long() == Some(long)
        } else {
            let short = word.strip_prefix('-').and_then(|s| s.chars().last());
            short.is_some() && a.get_short() == short
        }
    })
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

/// The values of `arg` starting with `current`, each after `prefix`; files when the value is
/// a path.
fn values(arg: &Arg, prefix: &str, current: &str, out: &mut String) -> u8 {
    let possible = arg.get_possible_values();
    if possible.is_empty() {
        let path = matches!(
            arg.get_value_hint(),
            clap::ValueHint::AnyPath | clap::ValueHint::FilePath | clap::ValueHint::DirPath
        );
        return if path && prefix.is_empty() {
            DEFAULT
        } else {
            NO_FILE_COMP
        };
    }
    for value in possible.iter().filter(|v| !v.is_hide_set()) {
        if value.get_name().starts_with(current) {
            let about = value
                .get_help()
                .map(|h| first_line(&h.to_string()))
                .unwrap_or_default();
            candidate(out, &format!("{prefix}{}", value.get_name()), &about);
        }
    }
    NO_FILE_COMP
}

fn candidate(out: &mut String, name: &str, about: &str) {
    out.push_str(name);
    if !about.is_empty() {
        out.push('\t');
        out.push_str(about);
    }
    out.push('\n');
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}
