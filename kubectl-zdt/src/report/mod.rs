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
}

/// The report as text in the chosen format (ends with a newline).
pub fn render(report: &Report, format: Format) -> Result<String, RenderError> {
    Ok(match format {
        Format::Table => table::render(report, false),
        Format::Wide => table::render(report, true),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
        Format::Yaml => serde_yaml::to_string(report)?,
    })
}
