//! What the static analysis needs from one ELF file: its interpreter,
//! `DT_NEEDED` libraries and search paths, imported and exported function
//! symbols, and the syscall sites in its code.

use object::elf::{DT_NEEDED, DT_RPATH, DT_RUNPATH, PF_X, PT_INTERP, PT_LOAD};
use object::read::elf::{Dyn, ElfFile64, ProgramHeader};
use object::{
    Architecture, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, SectionKind, SymbolKind,
};

use crate::disasm::{self, CodeScan};

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{path}: not an ELF file ({reason})")]
    Parse { path: String, reason: String },
    #[error("{path}: unsupported architecture {arch} (only x86_64 is analysed)")]
    Architecture { path: String, arch: String },
}

/// An exported (defined, dynamic) function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: String,
    pub addr: u64,
    /// Symbol size in bytes (0 when the symbol table does not say).
    pub size: u64,
}

/// The facts about one ELF object.
#[derive(Debug, Clone, Default)]
pub struct ElfInfo {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` entries, unexpanded.
    pub runpath: Vec<String>,
    /// Undefined dynamic symbols (functions the object imports).
    pub imports: Vec<String>,
    /// Defined dynamic function symbols, plus `.symtab` ones when present.
    pub exports: Vec<Export>,
    /// Whether the object has a dynamic section at all.
    pub dynamic: bool,
    /// Executable code regions: (virtual address, bytes).
    pub code: Vec<(u64, Vec<u8>)>,
    /// Function extents from `.eh_frame` (start, length): these delimit
    /// internal functions even in a stripped library.
    pub functions: Vec<(u64, u64)>,
    /// GOT slots the dynamic loader fills with libc's `syscall(2)`.
    pub syscall_slots: Vec<u64>,
    /// Slots a static-pie's start-up code fills with a load address plus
    /// an addend (`R_X86_64_RELATIVE`): slot -> address. How such a
    /// binary reaches its own functions through its GOT.
    pub relative_slots: std::collections::BTreeMap<u64, u64>,
}

impl ElfInfo {
    /// Parses `data`; `path` only names the file in errors.
    pub fn parse(path: &str, data: &[u8]) -> Result<ElfInfo, ElfError> {
        let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| ElfError::Parse {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
        if file.architecture() != Architecture::X86_64 {
            return Err(ElfError::Architecture {
                path: path.to_string(),
                arch: format!("{:?}", file.architecture()),
            });
        }
        let endian = file.endian();
        let mut info = ElfInfo::default();
        for ph in file.elf_program_headers() {
            if ph.p_type(endian) == PT_INTERP {
                if let Ok(Some(bytes)) = ph.interpreter(endian, data) {
                    info.interpreter = Some(String::from_utf8_lossy(bytes).into_owned());
                }
            }
        }
        let sections = file.elf_section_table();
        if let Ok(Some((dyns, link))) = sections.dynamic(endian, data) {
            info.dynamic = true;
            let strings = sections.strings(endian, data, link).unwrap_or_default();
            for d in dyns {
                let Some(tag) = d.tag32(endian) else { continue };
                if tag != DT_NEEDED && tag != DT_RUNPATH && tag != DT_RPATH {
                    continue;
                }
                let Ok(s) = d.string(endian, strings) else {
                    continue;
                };
                let s = String::from_utf8_lossy(s).into_owned();
                if tag == DT_NEEDED {
                    info.needed.push(s);
                } else {
                    info.runpath
                        .extend(s.split(':').filter(|p| !p.is_empty()).map(String::from));
                }
            }
        }
        for sym in file.dynamic_symbols() {
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() {
                continue;
            }
            if sym.is_undefined() {
                info.imports.push(name.to_string());
            } else if sym.kind() == SymbolKind::Text {
                info.exports.push(Export {
                    name: name.to_string(),
                    addr: sym.address(),
                    size: sym.size(),
                });
            }
        }
        if let Some(relocs) = file.dynamic_relocations() {
            let symbols = file.dynamic_symbol_table();
            for (offset, reloc) in relocs {
                if reloc.flags()
                    == (object::RelocationFlags::Elf {
                        r_type: object::elf::R_X86_64_RELATIVE,
                    })
                {
                    if let Ok(addend) = u64::try_from(reloc.addend()) {
                        info.relative_slots.insert(offset, addend);
                    }
                    continue;
                }
                let object::RelocationTarget::Symbol(index) = reloc.target() else {
                    continue;
                };
                let Some(sym) = symbols.as_ref().and_then(|t| t.symbol_by_index(index).ok()) else {
                    continue;
                };
                if sym.name() == Ok("syscall") {
                    info.syscall_slots.push(offset);
                }
            }
        }
        for sym in file.symbols() {
            if sym.kind() == SymbolKind::Text && !sym.is_undefined() && sym.address() != 0 {
                if let Ok(name) = sym.name() {
                    info.exports.push(Export {
                        name: name.to_string(),
                        addr: sym.address(),
                        size: sym.size(),
                    });
                }
            }
        }
        for section in file.sections() {
            if section.kind() == SectionKind::Text {
                if let Ok(bytes) = section.data() {
                    info.code.push((section.address(), bytes.to_vec()));
                }
            }
        }
        if let Some(section) = file.section_by_name(".eh_frame") {
            if let Ok(bytes) = section.data() {
                info.functions = eh_frame_functions(bytes, section.address());
            }
        }
        if info.code.is_empty() {
            // No section headers: fall back to executable segments.
            for ph in file.elf_program_headers() {
                if ph.p_type(endian) == PT_LOAD && ph.p_flags(endian) & PF_X != 0 {
                    if let Ok(bytes) = ph.data(endian, data) {
                        info.code.push((ph.p_vaddr(endian), bytes.to_vec()));
                    }
                }
            }
        }
        Ok(info)
    }

    /// A static executable: no interpreter and no dynamic section.
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && !self.dynamic
    }

    /// Scans every code region for syscall sites.
    pub fn scan_code(&self) -> CodeScan {
        let mut all = CodeScan::default();
        for (addr, bytes) in &self.code {
            let s = disasm::scan(bytes, *addr);
            all.sites.extend(s.sites);
            all.edges.extend(s.edges);
            all.calls.extend(s.calls);
            all.got_jumps.extend(s.got_jumps);
            all.jump_entered.extend(s.jump_entered);
            all.global_writes.extend(s.global_writes);
            all.global_loads.extend(s.global_loads);
        }
        all
    }
}

/// The 8 bytes at virtual address `vaddr` of the ELF file `data`, from the
/// file contents of a loadable segment (what the variable holds before any
/// code runs).
pub fn read_u64_at(data: &[u8], vaddr: u64) -> Option<u64> {
    let file = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != PT_LOAD {
            continue;
        }
        let start = ph.p_vaddr(endian);
        let filesz = ph.p_filesz(endian);
        if vaddr >= start && vaddr.checked_add(8)? <= start + filesz {
            let off = usize::try_from(ph.p_offset(endian) + (vaddr - start)).ok()?;
            let bytes = data.get(off..off + 8)?;
            return Some(u64::from_le_bytes(bytes.try_into().ok()?));
        }
    }
    None
}

/// Function extents described by the FDEs of an `.eh_frame` section.
fn eh_frame_functions(data: &[u8], address: u64) -> Vec<(u64, u64)> {
    use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
    let eh = EhFrame::new(data, LittleEndian);
    let bases = BaseAddresses::default().set_eh_frame(address);
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while let Ok(Some(entry)) = entries.next() {
        if let CieOrFde::Fde(partial) = entry {
            if let Ok(fde) = partial.parse(EhFrame::cie_from_offset) {
                if fde.len() > 0 {
                    out.push((fde.initial_address(), fde.len()));
                }
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ls_is_dynamic_with_libc() {
        let data = std::fs::read("/bin/ls").expect("read /bin/ls");
        let info = ElfInfo::parse("/bin/ls", &data).expect("parse");
        assert!(!info.is_static());
        assert!(
            info.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            info.needed
        );
        assert!(info.imports.iter().any(|n| n == "opendir"));
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
    }

    #[test]
    fn not_elf_is_an_error() {
        let err = ElfInfo::parse("/etc/hostname", b"hello").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/hostname: not an ELF file ("),
            "{err}"
        );
    }
}
