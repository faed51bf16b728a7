//! Rendering a [`Report`]: `table` (default) and `wide` for terminals, with the timeline chart;
//! `json` / `yaml` (schema `zdt.dev/v1` `RolloutReport`, docs/report-schema.md); `html` for a
//! self-contained file with the same chart as SVG.
//!
//! `rows` holds the cells both the terminal tables and the HTML tables show, `axis` the time
//! scale both charts share.

mod axis;
pub mod chart;
pub mod html;
mod rows;
mod table;

use crate::correlate::Report;

/// `-o` values, as kubectl spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("failed to encode the report as JSON")]
    Json(#[from] serde_json::Error),
    #[error("failed to encode the report as YAML")]
    Yaml(#[from] serde_yaml::Error),
    #[error("failed to write the report")]
    Write(#[from] std::io::Error),
}

/// Characters a terminal acts on rather than shows: C0 and C1 controls, DEL, and Unicode's
/// bidirectional overrides (which reorder what follows them).
fn acts_on_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Writes `c` visibly: `^[` for ESC (as kubectl does), `\r`, `\n`, `\t`, `^X` for the other
/// C0 controls and DEL, `\u{9b}` for the rest.
fn escape_char(c: char, out: &mut String) {
    match c {
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\u{0}'..='\u{1f}' => {
            out.push('^');
            out.push(char::from(c as u8 + b'@'));
        }
        '\u{7f}' => out.push_str("^?"),
        _ => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

/// `text` (names and reasons from the observations) safe to print on a terminal: every
/// character a terminal would act on is written visibly instead, newlines included.
pub fn escape_terminal(text: &str) -> std::borrow::Cow<'_, str> {
    escape_except(text, None)
}

/// [`escape_terminal`] for a whole rendered text: its newlines are kept.
pub fn escape_terminal_lines(text: &str) -> std::borrow::Cow<'_, str> {
    escape_except(text, Some('\n'))
}

fn escape_except(text: &str, keep: Option<char>) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| acts_on_terminal(c) && Some(c) != keep;
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            escape_char(c, &mut out);
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The report as text in the chosen format (ends with a newline).
pub fn render(report: &Report, format: Format) -> Result<String, RenderError> {
    Ok(match format {
        Format::Table => escape_terminal_lines(&table::render(report, false)).into_owned(),
        Format::Wide => escape_terminal_lines(&table::render(report, true)).into_owned(),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
        Format::Yaml => serde_yaml::to_string(report)?,
    })
}

/// [`render`] written to `w` as it is encoded: a JSON or YAML report of a long stream is never
/// held whole as text beside the report itself.
pub fn render_to(
    report: &Report,
    format: Format,
    w: &mut impl std::io::Write,
) -> Result<(), RenderError> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *w, report).map_err(|e| {
                if e.is_io() {
                    RenderError::Write(e.into())
                } else {
                    RenderError::Json(e)
                }
            })?;
            w.write_all(b"\n")?;
        }
        Format::Yaml => serde_yaml::to_writer(&mut *w, report)?,
        Format::Table | Format::Wide => w.write_all(render(report, format)?.as_bytes())?,
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_written_visibly() {
        assert_eq!(
            escape_terminal("web\u{1b}[2J\r\n\t\u{7f}\u{9b}\u{202e}x"),
            "web^[[2J\\r\\n\\t^?\\u{9b}\\u{202e}x"
        );
        assert_eq!(escape_terminal_lines("a\u{7}\nb"), "a^G\nb");
        assert!(matches!(
            escape_terminal("web-7759c99476-mbbl4 ±5 ms █"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
