//! A plugin that claims to be built for plugin ABI 999: crt must refuse to
//! load it and say which ABI it accepts.

use crt_plugin_api::{declare_plugin, PluginInit};

fn init() -> PluginInit {
    PluginInit::Handlers(Vec::new().into())
}

declare_plugin! {
    @abi 999,
    name: "crt-plugin-abi-mismatch",
    version: env!("CARGO_PKG_VERSION"),
    description: "built for another ABI",
    init: init,
}
