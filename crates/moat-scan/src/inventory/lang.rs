//! Language package manifests: Cargo.lock, package-lock.json (v1-v3),
//! installed `node_modules/*/package.json`, yarn.lock (v1 and berry),
//! Python `METADATA`, pinned requirements.txt, poetry.lock.

use serde_json::Value;

use super::Package;

fn pkg(kind: &str, ecosystem: &str, name: &str, version: &str, path: &str) -> Package {
    Package {
        name: name.to_string(),
        version: version.to_string(),
        kind: kind.into(),
        ecosystem: ecosystem.into(),
        source_name: None,
        source_version: None,
        layer: None,
        path: path.to_string(),
    }
}

/// `[[package]]` tables of a TOML lockfile (Cargo.lock, poetry.lock):
/// `(name, version, source)`. Only the flat `key = "value"` lines are read.
fn toml_packages(text: &str) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    let mut cur: Option<(Option<String>, Option<String>, Option<String>)> = None;
    let mut flush = |cur: &mut Option<(Option<String>, Option<String>, Option<String>)>| {
        if let Some((Some(n), Some(v), s)) = cur.take() {
            out.push((n, v, s));
        }
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            flush(&mut cur);
            if line == "[[package]]" {
                cur = Some((None, None, None));
            }
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        if !v.starts_with('"') {
            continue;
        }
        let v = v.trim_matches('"').to_string();
        match k.trim() {
            "name" => c.0 = Some(v),
            "version" => c.1 = Some(v),
            "source" => c.2 = Some(v),
            _ => {}
        }
    }
    flush(&mut cur);
    out
}

/// `Cargo.lock`: registry packages (workspace members have no `source`).
pub fn parse_cargo_lock(text: &str, path: &str) -> Vec<Package> {
    toml_packages(text)
        .into_iter()
        .filter(|(_, _, s)| s.as_deref().is_some_and(|s| s.starts_with("registry+")))
        .map(|(n, v, _)| pkg("cargo", "crates.io", &n, &v, path))
        .collect()
}

/// `poetry.lock`.
pub fn parse_poetry_lock(text: &str, path: &str) -> Vec<Package> {
    toml_packages(text)
        .into_iter()
        .map(|(n, v, _)| pkg("python", "PyPI", &n, &v, path))
        .collect()
}

/// `package-lock.json`, lockfileVersion 1 (`dependencies`, nested) and 2/3
/// (`packages` keyed by `node_modules/...` path).
pub fn parse_package_lock(text: &str, path: &str) -> Option<Vec<Package>> {
    let v: Value = serde_json::from_str(text).ok()?;
    let mut out = Vec::new();
    if let Some(pkgs) = v.get("packages").and_then(Value::as_object) {
        for (key, p) in pkgs {
            let Some(idx) = key.rfind("node_modules/") else {
                continue; // "" is the root project
            };
            if p.get("link").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            let Some(version) = p.get("version").and_then(Value::as_str) else {
                continue;
            };
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or(&key[idx + "node_modules/".len()..]);
            out.push(pkg("npm", "npm", name, version, path));
        }
    } else if let Some(deps) = v.get("dependencies").and_then(Value::as_object) {
        fn walk(deps: &serde_json::Map<String, Value>, path: &str, out: &mut Vec<Package>) {
            for (name, d) in deps {
                if let Some(version) = d.get("version").and_then(Value::as_str) {
                    if !version.starts_with("file:") && !version.contains("://") {
                        out.push(pkg("npm", "npm", name, version, path));
                    }
                }
                if let Some(nested) = d.get("dependencies").and_then(Value::as_object) {
                    walk(nested, path, out);
                }
            }
        }
        walk(deps, path, &mut out);
    }
    Some(out)
}

/// An installed `node_modules/<name>/package.json`.
pub fn parse_node_package_json(text: &str, path: &str) -> Option<Package> {
    let v: Value = serde_json::from_str(text).ok()?;
    let name = v.get("name")?.as_str()?;
    let version = v.get("version")?.as_str()?;
    Some(pkg("npm", "npm", name, version, path))
}

/// `yarn.lock`, classic (`version "1.2.3"`) and berry (`version: 1.2.3`).
pub fn parse_yarn_lock(text: &str, path: &str) -> Vec<Package> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            name = None;
            let header = line.trim_end_matches(':');
            let first = header.split(", ").next().unwrap_or("").trim_matches('"');
            if first.starts_with("__metadata")
                || first.contains("@workspace:")
                || first.contains("@file:")
            {
                continue;
            }
            // name@range; a scoped name starts with '@'.
            // Skip the first character (a scope's '@'), not the first byte:
            // the header may start with any UTF-8 character.
            let skip = first.chars().next().map_or(0, char::len_utf8);
            if let Some(at) = first[skip..].find('@') {
                name = Some(first[..skip + at].to_string());
            }
            continue;
        }
        let t = line.trim();
        if let Some(v) = t.strip_prefix("version") {
            if let Some(n) = name.take() {
                let v = v.trim_start_matches(':').trim().trim_matches('"');
                out.push(pkg("npm", "npm", &n, v, path));
            }
        }
    }
    out
}

/// Python core metadata (`*.dist-info/METADATA`, `*.egg-info/PKG-INFO`).
pub fn parse_python_metadata(text: &str, path: &str) -> Option<Package> {
    let (mut name, mut version) = (None, None);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Name:") {
            name = Some(v.trim());
        } else if let Some(v) = line.strip_prefix("Version:") {
            version = Some(v.trim());
        }
    }
    Some(pkg("python", "PyPI", name?, version?, path))
}

/// Pinned lines (`name==version`) of a requirements file; ranges and
/// unpinned names cannot be matched and are left out.
pub fn parse_requirements(text: &str, path: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let line = line.split(';').next().unwrap_or("").trim();
        let line = line
            .split(" --hash")
            .next()
            .unwrap_or("")
            .trim()
            .trim_end_matches('\\')
            .trim();
        if line.starts_with('-') {
            continue;
        }
        let Some((name, version)) = line.split_once("==") else {
            continue;
        };
        let name = name.split('[').next().unwrap_or("").trim();
        let version = version.trim().trim_start_matches('=');
        if name.is_empty() || version.is_empty() || version.contains('*') || version.contains(',') {
            continue;
        }
        out.push(pkg("python", "PyPI", name, version, path));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yarn_headers_may_start_with_any_character() {
        // Found by the scan_metadata fuzzer: slicing at byte 1 panicked
        // when the header began with a multi-byte character.
        let lock = "\u{e9}x@^1:\n  version \"1.0.0\"\n\"@scope/p@^2\":\n  version \"2.1.0\"\n";
        let pkgs = parse_yarn_lock(lock, "yarn.lock");
        let got: Vec<(&str, &str)> = pkgs
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(got, vec![("\u{e9}x", "1.0.0"), ("@scope/p", "2.1.0")]);
    }
}
