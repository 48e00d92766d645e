//! A plugin as an older SDK (0.0.3) would have built it: the same root module
//! name, an older version and another layout. The host must refuse it.

use abi_stable::{
    declare_root_module_statics, export_root_module, library::RootModule, package_version_strings,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RStr, StableAbi,
};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = OldPluginRef)))]
#[sabi(missing_field(panic))]
pub struct OldPlugin {
    #[sabi(last_prefix_field)]
    pub name: RStr<'static>,
}

impl RootModule for OldPluginRef {
    declare_root_module_statics! {OldPluginRef}
    const BASE_NAME: &'static str = "fastworker_plugin";
    const NAME: &'static str = "fastworker-plugin-sdk";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[export_root_module]
pub fn root() -> OldPluginRef {
    OldPlugin { name: RStr::from_str("old-sdk-plugin") }.leak_into_prefix()
}
