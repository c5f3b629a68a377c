//! Build metadata embedded in executables: Go build info
//! (`.go.buildinfo`, Go 1.18+ inline format) and cargo-auditable
//! dependency lists (`.dep-v0`, zlib-compressed JSON).

use std::io::Read;

use super::Package;

/// The bytes of ELF64 little-endian section `name`, if present.
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    if elf.get(..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at =
        |o: usize| -> Option<u16> { Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?)) };
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?)) };
    let u64_at =
        |o: usize| -> Option<u64> { Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)) };
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    if shentsize < 64 {
        return None;
    }
    let sh = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let strtab_hdr = sh(shstrndx)?;
    let strtab_off = usize::try_from(u64_at(strtab_hdr + 0x18)?).ok()?;
    for i in 0..shnum {
        let h = sh(i)?;
        let name_off = u32_at(h)? as usize;
        let sname = elf.get(strtab_off.checked_add(name_off)?..)?;
        let end = sname.iter().position(|&b| b == 0)?;
        if &sname[..end] != name.as_bytes() {
            continue;
        }
        let ty = u32_at(h + 4)?;
        if ty == 8 {
            return None; // SHT_NOBITS
        }
        let off = usize::try_from(u64_at(h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(h + 0x20)?).ok()?;
        return elf.get(off..off.checked_add(size)?);
    }
    None
}

const GO_MAGIC: &[u8] = b"\xff Go buildinf:";

fn uvarint(b: &[u8]) -> Option<(usize, usize)> {
    let mut x: u64 = 0;
    for (i, &c) in b.iter().enumerate().take(10) {
        x |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((usize::try_from(x).ok()?, i + 1));
        }
    }
    None
}

/// Go build info: `(go version, modinfo)` of a Go 1.18+ binary.
pub fn go_buildinfo(bin: &[u8]) -> Option<(String, String)> {
    let data = match elf_section(bin, ".go.buildinfo") {
        Some(s) => s,
        None => {
            let at = bin.windows(GO_MAGIC.len()).position(|w| w == GO_MAGIC)?;
            &bin[at..]
        }
    };
    if !data.starts_with(GO_MAGIC) || data.len() < 32 || data[15] & 2 == 0 {
        return None; // older pointer-based format: not read
    }
    let mut rest = &data[32..];
    let mut next = || -> Option<&[u8]> {
        let (len, n) = uvarint(rest)?;
        let s = rest.get(n..n.checked_add(len)?)?;
        rest = &rest[n + len..];
        Some(s)
    };
    let version = String::from_utf8_lossy(next()?).into_owned();
    let mut modinfo = next()?;
    // Go wraps modinfo in two 16-byte sentinels.
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        modinfo = &modinfo[16..modinfo.len() - 16];
    }
    Some((version, String::from_utf8_lossy(modinfo).into_owned()))
}

/// Go modules (and `stdlib` at the toolchain version) of a Go binary.
pub fn go_packages(bin: &[u8], path: &str) -> Vec<Package> {
    let Some((goversion, modinfo)) = go_buildinfo(bin) else {
        return Vec::new();
    };
    let mut mods: Vec<(String, String)> = Vec::new();
    for line in modinfo.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["mod" | "dep", p, v, ..] => mods.push((p.to_string(), v.to_string())),
            ["=>", p, v, ..] => {
                if let Some(last) = mods.last_mut() {
                    *last = (p.to_string(), v.to_string());
                }
            }
            _ => {}
        }
    }
    let mk = |name: &str, version: &str| Package {
        name: name.to_string(),
        version: version.to_string(),
        kind: "go".into(),
        ecosystem: "Go".into(),
        source_name: None,
        source_version: None,
        layer: None,
        path: path.to_string(),
    };
    let mut out: Vec<Package> = mods
        .iter()
        .filter(|(_, v)| !v.is_empty() && v != "(devel)")
        .map(|(p, v)| mk(p, v))
        .collect();
    // "go1.21.3" or "go1.21.3 X:boringcrypto"
    let gv = goversion.split_whitespace().next().unwrap_or("");
    if let Some(v) = gv.strip_prefix("go") {
        out.push(mk("stdlib", v));
    }
    out
}

/// Crates of a binary built with cargo-auditable.
pub fn auditable_packages(bin: &[u8], path: &str) -> Vec<Package> {
    let Some(sec) = elf_section(bin, ".dep-v0") else {
        return Vec::new();
    };
    let mut json = Vec::new();
    let mut dec = flate2::read::ZlibDecoder::new(sec).take(8 << 20);
    if dec.read_to_end(&mut json).is_err() {
        return Vec::new();
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return Vec::new();
    };
    let Some(pkgs) = v.get("packages").and_then(|p| p.as_array()) else {
        return Vec::new();
    };
    pkgs.iter()
        .filter(|p| p.get("source").and_then(|s| s.as_str()) == Some("crates.io"))
        .filter_map(|p| {
            Some(Package {
                name: p.get("name")?.as_str()?.to_string(),
                version: p.get("version")?.as_str()?.to_string(),
                kind: "cargo".into(),
                ecosystem: "crates.io".into(),
                source_name: None,
                source_version: None,
                layer: None,
                path: path.to_string(),
            })
        })
        .collect()
}

/// Build a minimal ELF64 file holding one section (for tests and fixtures).
pub fn build_elf_with_section(name: &str, content: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    let sec_off = f.len();
    f.extend_from_slice(content);
    let strtab_off = f.len();
    let mut strtab = vec![0u8];
    let name_idx = strtab.len();
    strtab.extend_from_slice(name.as_bytes());
    strtab.push(0);
    let shstr_idx = strtab.len();
    strtab.extend_from_slice(b".shstrtab\0");
    f.extend_from_slice(&strtab);
    while !f.len().is_multiple_of(8) {
        f.push(0);
    }
    let shoff = f.len();
    let mut hdr = |name: usize, ty: u32, off: usize, size: usize| {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        f.extend_from_slice(&h);
    };
    hdr(0, 0, 0, 0);
    hdr(name_idx, 1, sec_off, content.len());
    hdr(shstr_idx, 3, strtab_off, strtab.len());
    f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    f
}
