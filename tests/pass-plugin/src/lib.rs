//! A plugin that keeps every default of the SDK: the smallest plugin there is, and the one the
//! host's tests use to check that pass-through defaults are declined and then skipped.

use ovsb_plugin_sdk::{Config, Plugin};

/// Passes everything through.
pub struct PassThrough;

impl Plugin for PassThrough {
    fn configure(_config: Config) -> Result<Self, String> {
        Ok(PassThrough)
    }
}

ovsb_plugin_sdk::export_plugin!(PassThrough);
