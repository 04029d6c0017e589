//! Release builds embed the meeting page; refuse to build one without it.

fn main() {
    println!("cargo::rerun-if-changed=web/dist/index.html");
    // The embedded migrations (sqlx::migrate!) are read when the crate compiles.
    println!("cargo::rerun-if-changed=migrations");
    println!("cargo::rerun-if-env-changed=TCHAP_VISIO_ALLOW_MISSING_WEB");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let skip = std::env::var_os("TCHAP_VISIO_ALLOW_MISSING_WEB").is_some();
    if release && !skip && !std::path::Path::new("web/dist/index.html").exists() {
        panic!(
            "\n\nThe meeting page is not built: web/dist/index.html is missing.\n\
             Run: scripts/build-web.sh\n\
             (a release binary embeds the page; debug builds serve a placeholder without it)\n"
        );
    }
}
