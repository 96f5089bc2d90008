//! Test fixture: a library whose root module declares another SDK version, as one built against
//! an older ftlab-sdk would. The registry must refuse it before calling anything else.

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RErr, RResult, RStr, RString, RVec};
use ftlab_sdk::abi::{
    this_abi, AbiInfo, ErrorKind, HostRef, MethodBox, MethodInfo, MethodLibrary, MethodLibraryRef, PluginError,
};

extern "C" fn abi_info() -> AbiInfo {
    AbiInfo { sdk_version: "0.0.1".into(), ..this_abi() }
}

extern "C" fn methods() -> RResult<RVec<MethodInfo>, PluginError> {
    RResult::ROk(RVec::new())
}

extern "C" fn create(name: RStr<'_>, _: RStr<'_>, _: HostRef<'_>) -> RResult<MethodBox, PluginError> {
    RErr(PluginError {
        kind: ErrorKind::Failed,
        method: name.into(),
        call: "new".into(),
        message: "never called".into(),
    })
}

extern "C" fn config_from_export(name: RStr<'_>, _: RStr<'_>) -> RResult<RString, PluginError> {
    RErr(PluginError {
        kind: ErrorKind::Failed,
        method: name.into(),
        call: "config_from_export".into(),
        message: "never called".into(),
    })
}

/// The root module, declaring SDK 0.0.1.
#[abi_stable::export_root_module]
pub fn root_module() -> MethodLibraryRef {
    MethodLibrary { abi_info, methods, config_from_export, create }.leak_into_prefix()
}
