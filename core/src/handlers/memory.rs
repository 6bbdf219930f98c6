//! Built-in handler for private anonymous memory (heap, stacks, malloc
//! arenas, guard areas). Shared anonymous memory is `shmem.rs`'s.

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use crt_plugin_api::{Handler, PagePolicy, TaskRef, VmaDesc, VmaDump, VmaRestore};

use super::{boxed, Builtin, BUILTIN_VERSION};

/// Anonymous memory; crt stores the pages, the area is mapped anonymously.
pub struct AnonMemory;

inventory::submit! { Builtin { priority: 200, make: || boxed(AnonMemory) } }

impl Handler for AnonMemory {
    fn name(&self) -> RString {
        "anon-memory".into()
    }

    fn version(&self) -> RString {
        BUILTIN_VERSION.into()
    }

    fn claims(&self) -> RString {
        "memory: anonymous private areas (heap, stacks, MAP_ANONYMOUS)".into()
    }

    fn claims_vma(&self, vma: &VmaDesc) -> bool {
        let name = vma.name.as_str();
        let anon =
            vma.ino == 0 && (name.is_empty() || name == "[heap]" || name == "[stack]" || name.starts_with("[anon:"));
        anon && !vma.shared
    }

    fn dump_vma(&self, _task: TaskRef<'_>, _vma: &VmaDesc) -> RResult<VmaDump, RString> {
        RResult::ROk(VmaDump { blob: RVec::new(), pages: PagePolicy::Private })
    }

    fn restore_vma(&self, _task: TaskRef<'_>, _vma: &VmaDesc, _blob: RSlice<'_, u8>) -> RResult<VmaRestore, RString> {
        RResult::ROk(VmaRestore::Anonymous)
    }
}
