//! The static files, compiled into the binary: no CDN, nothing to install next to it.
//! Versions and where they come from: `assets/README.md`.

/// A static file's bytes and content type, by name.
pub(crate) fn get(name: &str) -> Option<(&'static [u8], &'static str)> {
    const JS: &str = "text/javascript; charset=utf-8";
    const CSS: &str = "text/css; charset=utf-8";
    Some(match name {
        "htmx.min.js" => (include_bytes!("../assets/htmx.min.js"), JS),
        "uPlot.iife.min.js" => (include_bytes!("../assets/uPlot.iife.min.js"), JS),
        "uPlot.min.css" => (include_bytes!("../assets/uPlot.min.css"), CSS),
        "dashboard.js" => (include_bytes!("../assets/dashboard.js"), JS),
        "dashboard.css" => (include_bytes!("../assets/dashboard.css"), CSS),
        _ => return None,
    })
}
