//! Guest memory as the frontend shares it: the regions of
//! `SET_MEM_TABLE` / `ADD_MEM_REG` / `REM_MEM_REG`, each a file the
//! frontend passes, mapped here; and the translation of the frontend's own
//! virtual addresses (which `SET_VRING_ADDR` uses) to guest addresses.
//!
//! The queue workers read memory through a [`GuestMemoryAtomic`]: a table
//! change swaps it whole, and a batch in progress keeps the memory it
//! started with.

use std::fs::File;
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserMemoryRegion, VhostUserSingleMemoryRegion};
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// How many regions a frontend may add one by one (`GET_MAX_MEM_SLOTS`);
/// QEMU's limit for vhost-user.
pub const MAX_SLOTS: u64 = 509;

/// Errors of the memory table.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A region could not be mapped.
    #[error("guest memory region at {gpa:#x} ({size} bytes): {reason}")]
    Map {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
        /// Why.
        reason: String,
    },
    /// Regions overlap or there are too many.
    #[error("guest memory table: {0}")]
    Table(String),
    /// The region to remove is not in the table.
    #[error("no guest memory region at {gpa:#x} ({size} bytes) to remove")]
    NoSuchRegion {
        /// Guest physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
}

#[derive(Clone)]
struct Region {
    gpa: u64,
    size: u64,
    /// The frontend's virtual address of the region.
    user_addr: u64,
    mapped: Arc<GuestRegionMmap>,
}

/// The guest memory of one connection.
pub struct MemoryTable {
    regions: Vec<Region>,
    atomic: GuestMemoryAtomic<GuestMemoryMmap>,
}

impl Default for MemoryTable {
    fn default() -> Self {
        MemoryTable {
            regions: Vec::new(),
            atomic: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        }
    }
}

fn map(desc: &VhostUserMemoryRegion, file: File) -> Result<Region, MemoryError> {
    let err = |reason: String| MemoryError::Map {
        gpa: desc.guest_phys_addr,
        size: desc.memory_size,
        reason,
    };
    let size = usize::try_from(desc.memory_size).map_err(|e| err(e.to_string()))?;
    let mmap = MmapRegion::from_file(vm_memory::FileOffset::new(file, desc.mmap_offset), size)
        .map_err(|e| err(e.to_string()))?;
    let mapped = GuestRegionMmap::new(mmap, GuestAddress(desc.guest_phys_addr))
        .ok_or_else(|| err("the region ends beyond the address space".into()))?;
    Ok(Region {
        gpa: desc.guest_phys_addr,
        size: desc.memory_size,
        user_addr: desc.user_addr,
        mapped: Arc::new(mapped),
    })
}

impl MemoryTable {
    /// The memory the workers read.
    pub fn atomic(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        self.atomic.clone()
    }

    /// Replace the whole table (`SET_MEM_TABLE`).
    pub fn set(
        &mut self,
        descs: &[VhostUserMemoryRegion],
        files: Vec<File>,
    ) -> Result<(), MemoryError> {
        if descs.len() != files.len() {
            return Err(MemoryError::Table(format!(
                "{} regions but {} files",
                descs.len(),
                files.len()
            )));
        }
        let regions = descs
            .iter()
            .zip(files)
            .map(|(d, f)| map(d, f))
            .collect::<Result<Vec<_>, _>>()?;
        self.publish(regions)
    }

    /// Add one region (`ADD_MEM_REG`).
    pub fn add(
        &mut self,
        desc: &VhostUserSingleMemoryRegion,
        file: File,
    ) -> Result<(), MemoryError> {
        if self.regions.len() as u64 >= MAX_SLOTS {
            return Err(MemoryError::Table(format!("more than {MAX_SLOTS} regions")));
        }
        let mut regions = self.regions.clone();
        regions.push(map(desc, file)?);
        self.publish(regions)
    }

    /// Remove one region (`REM_MEM_REG`).
    pub fn remove(&mut self, desc: &VhostUserSingleMemoryRegion) -> Result<(), MemoryError> {
        let Some(i) = self
            .regions
            .iter()
            .position(|r| r.gpa == desc.guest_phys_addr && r.size == desc.memory_size)
        else {
            return Err(MemoryError::NoSuchRegion {
                gpa: desc.guest_phys_addr,
                size: desc.memory_size,
            });
        };
        let mut regions = self.regions.clone();
        regions.remove(i);
        self.publish(regions)
    }

    /// Make `regions` the table and the memory the workers see (they must
    /// not overlap); on error nothing changes.
    fn publish(&mut self, mut regions: Vec<Region>) -> Result<(), MemoryError> {
        // Frontends add regions in any order; vm-memory wants them sorted.
        regions.sort_by_key(|r| r.gpa);
        let mem = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(regions.iter().map(|r| r.mapped.clone()).collect())
                .map_err(|e| MemoryError::Table(e.to_string()))?
        };
        self.atomic
            .lock()
            .map_err(|_| {
                MemoryError::Table("the memory table's lock is held by a failed thread".into())
            })?
            .replace(mem);
        self.regions = regions;
        Ok(())
    }

    /// The guest address of the frontend's virtual address `va`.
    pub fn va_to_gpa(&self, va: u64) -> Option<GuestAddress> {
        self.regions
            .iter()
            .find(|r| va >= r.user_addr && va - r.user_addr < r.size)
            .map(|r| GuestAddress(r.gpa + (va - r.user_addr)))
    }

    /// True once the frontend has shared some memory.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddressSpace};

    fn file(len: u64) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(len).unwrap();
        f
    }

    fn region(gpa: u64, size: u64, va: u64) -> VhostUserSingleMemoryRegion {
        VhostUserSingleMemoryRegion::new(gpa, size, va, 0)
    }

    #[test]
    fn regions_added_in_any_order_translate_and_read() {
        let mut t = MemoryTable::default();
        assert!(t.is_empty());
        // libblkio adds its regions high address first.
        t.add(&region(0x10_0000, 0x1000, 0x7000_0000), file(0x1000))
            .unwrap();
        t.add(&region(0, 0x2000, 0x5000_0000), file(0x2000))
            .unwrap();
        assert_eq!(t.va_to_gpa(0x5000_1234), Some(GuestAddress(0x1234)));
        assert_eq!(t.va_to_gpa(0x7000_0010), Some(GuestAddress(0x10_0010)));
        assert_eq!(t.va_to_gpa(0x5000_2000), None, "one past the end");
        let mem = t.atomic().memory();
        mem.write_obj(7u32, GuestAddress(0x10_0ffc)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x10_0ffc)).unwrap(), 7);
        assert!(mem.read_obj::<u32>(GuestAddress(0x3000)).is_err(), "a hole");
    }

    #[test]
    fn overlaps_and_unknown_removals_are_refused_and_change_nothing() {
        let mut t = MemoryTable::default();
        t.add(&region(0, 0x2000, 0x5000_0000), file(0x2000))
            .unwrap();
        let e = t
            .add(&region(0x1000, 0x2000, 0x6000_0000), file(0x2000))
            .unwrap_err();
        assert!(matches!(e, MemoryError::Table(_)), "{e}");
        assert_eq!(t.va_to_gpa(0x6000_0000), None);
        let e = t.remove(&region(0x8000, 0x1000, 0)).unwrap_err();
        assert!(
            e.to_string().contains("no guest memory region at 0x8000"),
            "{e}"
        );
        t.remove(&region(0, 0x2000, 0x5000_0000)).unwrap();
        assert!(t.is_empty());
        assert!(t.atomic().memory().read_obj::<u8>(GuestAddress(0)).is_err());
    }

    #[test]
    fn a_region_past_its_file_or_the_address_space_is_an_error() {
        let mut t = MemoryTable::default();
        let e = t
            .set(&[*region(u64::MAX - 0xfff, 0x2000, 0)], vec![file(0x2000)])
            .unwrap_err();
        assert!(matches!(e, MemoryError::Map { .. }), "{e}");
        let e = t.set(&[*region(0, 0x1000, 0)], vec![]).unwrap_err();
        assert!(e.to_string().contains("1 regions but 0 files"), "{e}");
    }
}
