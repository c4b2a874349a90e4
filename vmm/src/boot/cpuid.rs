//! CPUID: KVM's supported set, with each vCPU's APIC ID and a one-socket topology of `vcpus`
//! cores (one thread each) filled in, the hypervisor bit set and the PMU hidden.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_ADDRESS_SIZES: u32 = 0x8000_0008;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits of the APIC ID that number the cores of a package of `vcpus` cores.
fn core_id_bits(vcpus: u8) -> u32 {
    u32::from(vcpus).next_power_of_two().trailing_zeros()
}

fn patch_entry(entry: &mut kvm_cpuid_entry2, apic_id: u8, vcpus: u8) {
    let apic = u32::from(apic_id);
    let count = u32::from(vcpus);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: APIC ID (31:24), logical processors per package (23:16), CLFLUSH size (15:8).
            entry.ebx = (apic << 24) | (count << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR;
            if vcpus > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX 31:26: cores per package - 1; 25:14: threads sharing this cache - 1.
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        LEAF_PMU => {
            // No virtual PMU: performance counters are not part of the microVM.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            entry.edx = apic;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (TOPOLOGY_LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_id_bits(vcpus);
                    entry.ebx = count;
                    entry.ecx = (TOPOLOGY_LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        LEAF_EXT_ADDRESS_SIZES => {
            // ECX 7:0: cores per package - 1 (AMD's view of the topology).
            entry.ecx = (entry.ecx & !0xff) | (count - 1);
        }
        _ => {}
    }
}

/// Adapts `supported` (from KVM_GET_SUPPORTED_CPUID) for the vCPU with `apic_id` of `vcpus`.
pub fn for_vcpu(supported: &CpuId, apic_id: u8, vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, apic_id, vcpus);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn apic_id_and_topology_are_filled_in() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
            entry(LEAF_CACHE_PARAMS, 0),
        ])
        .unwrap();
        let c = for_vcpu(&supported, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(
            (e[1].edx, e[1].ebx, e[1].ecx >> 8),
            (3, 1, TOPOLOGY_LEVEL_SMT)
        );
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx >> 8),
            (2, 4, TOPOLOGY_LEVEL_CORE)
        );
        assert_eq!(e[3].ecx >> 8, 0);
        assert_eq!(e[4].eax >> 26, 3);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(8), 3);
    }
}
