//! The HTML report really renders: `kubectl zdt analyze --html` on the real fast-exit rollout,
//! then a headless Chromium screenshot of the file, which must show the page and the chart's
//! red unsafe-window bar. Needs Debian's `chromium` (installed by `./x setup`); without it this
//! test fails, it does not skip.

use std::{path::Path, process::Command};

/// Pixels of the unsafe-window bar: #d62728 at 45 % over the chart's near-white background.
fn is_window_red(px: &[u8]) -> bool {
    px[0] > 200 && px[1] < 175 && px[2] < 175 && px[0] - px[1].min(px[0]) > 60
}

/// Headless Chromium, offline, with its profile in `dir`.
fn chromium(dir: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()));
    c
}

#[test]
fn the_html_report_renders_its_chart_in_headless_chromium() {
    let dir = std::env::temp_dir().join(format!("zdt-html-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("report.html");
    let png = dir.join("report.png");
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/correlate/real-nftables-fast-exit.jsonl");

    let analyze = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["analyze", "-o", "json", "--html"])
        .arg(&html)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        analyze.status.success(),
        "analyze failed: {}",
        String::from_utf8_lossy(&analyze.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<svg") && page.contains("class=\"window\""),
        "no chart in the page"
    );
    for external in ["<script", "<link", " src=", " href="] {
        assert!(
            !page.contains(external),
            "the page must be self-contained, found {external}"
        );
    }

    let chromium = chromium(&dir)
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1400,900")
        .arg(format!("file://{}", html.display()))
        .output();
    let chromium = match chromium {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run chromium ({e}): run `./x setup`, which installs Debian's chromium package"
        ),
    };
    assert!(
        png.exists(),
        "chromium wrote no screenshot (status {}): {}",
        chromium.status,
        String::from_utf8_lossy(&chromium.stderr)
    );

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1400, 900));
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "unexpected PNG colour type {:?}",
        info.color_type
    );
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    let dark = pixels
        .iter()
        .filter(|p| p[0] < 100 && p[1] < 100 && p[2] < 100)
        .count();
    let red = pixels.iter().filter(|p| is_window_red(p)).count();
    // Text makes thousands of dark pixels; the ~950×14 px window bar makes over ten thousand red.
    assert!(dark > 5_000, "the page looks blank: {dark} dark pixels");
    assert!(
        red > 5_000,
        "the unsafe window bar is not visible: {red} red pixels"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The page fits a 1000 px window: no table or chart wider than the page (the two-node real
/// rollout, four pods with every mark, made the page scroll sideways to 1276 px).
#[test]
fn the_html_report_fits_a_1000_px_window() {
    let dir = std::env::temp_dir().join(format!("zdt-html-fit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("report.html");
    let input = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/real-cluster/v1.28-fast2-128-b.jsonl");
    let analyze = Command::new(env!("CARGO_BIN_EXE_kubectl-zdt"))
        .args(["analyze", "--html"])
        .arg(&html)
        .arg(&input)
        .output()
        .unwrap();
    assert!(analyze.status.success());
    // The report itself has no script; this copy gets one that writes the page's layout width
    // into its title, which Chromium's DOM dump shows.
    let probe = dir.join("probe.html");
    let page = std::fs::read_to_string(&html).unwrap().replace(
        "</body>",
        "<script>document.title=document.documentElement.scrollWidth+'/'+window.innerWidth</script></body>",
    );
    std::fs::write(&probe, page).unwrap();
    let out = chromium(&dir)
        .args(["--window-size=1000,900", "--dump-dom"])
        .arg(format!("file://{}", probe.display()))
        .output()
        .expect("cannot run chromium: run `./x setup`, which installs Debian's chromium package");
    let dom = String::from_utf8_lossy(&out.stdout);
    let title = dom
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or_default();
    let (scroll, window) = title
        .split_once('/')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .unwrap_or_else(|| panic!("no layout width in the dumped DOM's title: {title:?}"));
    assert!(
        scroll <= window,
        "the page is {scroll} px wide in a {window} px window"
    );
    std::fs::remove_dir_all(&dir).ok();
}
