//! `toygres-actors demo`: a private PostgreSQL, a sample fleet, the service, and the story
//! told on screen with a live status table.

use crate::cli::{DemoArgs, GlobalArgs};

pub async fn run(_global: &GlobalArgs, _args: &DemoArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`demo` is not built yet")
}
