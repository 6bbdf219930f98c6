//! The root module every plugin `.so` exports, and [`declare_plugin!`](crate::declare_plugin).

use abi_stable::library::RootModule;
use abi_stable::package_version_strings;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RStr, RString, RVec};
use abi_stable::StableAbi;

use crate::HandlerBox;

/// What a plugin's `init` function returns.
#[repr(C)]
#[derive(StableAbi)]
pub enum PluginInit {
    /// The handlers this plugin provides.
    Handlers(RVec<HandlerBox>),
    /// The plugin does not run on this machine (no such device, missing
    /// kernel feature…); crt goes on without it and says why.
    Declined(RString),
}

/// The root module of a plugin. Build it with [`declare_plugin!`](crate::declare_plugin).
///
/// This is a *prefix type*: crt releases may append fields after `init`,
/// and a plugin built against an older `crt-plugin-api` keeps loading.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The [`ABI_VERSION`](crate::ABI_VERSION) the plugin was built against.
    pub abi_version: u32,
    /// Plugin name (`crt-plugin-aio`).
    pub name: RStr<'static>,
    /// Plugin version (semver).
    pub version: RStr<'static>,
    /// One line for `crt plugins`.
    pub description: RStr<'static>,
    /// Creates the plugin's handlers, or declines.
    #[sabi(last_prefix_field)]
    pub init: extern "C" fn() -> PluginInit,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "crt_plugin";
    const NAME: &'static str = "crt_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Exports a plugin's root module. Use it once, at the root of a `cdylib`
/// crate that depends on `crt-plugin-api` only.
///
/// ```no_run
/// use crt_plugin_api::{declare_plugin, PluginInit, handler_box};
/// # use crt_plugin_api::{abi_stable::std_types::RString, Handler};
/// # #[derive(Default)]
/// # struct MyDevice;
/// # impl Handler for MyDevice {
/// #     fn name(&self) -> RString { "mydev".into() }
/// #     fn version(&self) -> RString { "1.0.0".into() }
/// # }
///
/// fn init() -> PluginInit {
///     if !std::path::Path::new("/dev/mydev").exists() {
///         return PluginInit::Declined("no /dev/mydev on this machine".into());
///     }
///     PluginInit::Handlers(vec![handler_box(MyDevice::default())].into())
/// }
///
/// declare_plugin! {
///     name: "crt-plugin-mydev",
///     version: env!("CARGO_PKG_VERSION"),
///     description: "Checkpoints /dev/mydev mappings",
///     init: init,
/// }
/// ```
#[macro_export]
macro_rules! declare_plugin {
    (name: $name:expr, version: $version:expr, description: $desc:expr, init: $init:path $(,)?) => {
        $crate::declare_plugin!(@abi $crate::ABI_VERSION, name: $name, version: $version, description: $desc, init: $init);
    };
    (@abi $abi:expr, name: $name:expr, version: $version:expr, description: $desc:expr, init: $init:path $(,)?) => {
        #[doc(hidden)]
        pub fn __crt_plugin_root_module() -> $crate::PluginModRef {
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;
            extern "C" fn __crt_plugin_init() -> $crate::PluginInit {
                $init()
            }
            $crate::PluginMod {
                abi_version: $abi,
                name: $crate::abi_stable::std_types::RStr::from_str($name),
                version: $crate::abi_stable::std_types::RStr::from_str($version),
                description: $crate::abi_stable::std_types::RStr::from_str($desc),
                init: __crt_plugin_init,
            }
            .leak_into_prefix()
        }

        // The symbol abi_stable looks up (`ROOT_MODULE_LOADER_NAME`; checked
        // by a test in crt-plugin-api), so plugins need no abi_stable import.
        #[doc(hidden)]
        #[no_mangle]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader = {
            extern "C" fn __crt_erased_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(__crt_plugin_root_module)
            }
            // SAFETY: the constructor returns the PluginModRef root module,
            // the type given here; abi_stable checks its layout at load.
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<$crate::PluginModRef>(
                    __crt_erased_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn loader_symbol_matches_abi_stable() {
        assert_eq!(abi_stable::library::ROOT_MODULE_LOADER_NAME, "_1as_0lib_1header_0root_bmodule_bloader");
    }
}
