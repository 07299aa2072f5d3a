//! Checks of the embedded PTX table, without a GPU: every entry constant names an `.entry` of its
//! module's source, every `kernels/*.ptx` file is embedded, and every module targets PTX ISA
//! <= 7.8 and sm_75 or older (so the driver JITs it on Turing through Hopper) unless its header
//! documents why it needs more with a `// needs-newer-target: <reason>` line.

use std::collections::BTreeSet;
use std::path::Path;

use hyperseg_engine::backend::cuda::kernels::{module_for_entry, MODULES};

/// The source with `//` comments removed.
fn code(src: &str) -> String {
    src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The operand of the first `directive` line (`.version`, `.target`).
fn directive<'a>(code: &'a str, directive: &str) -> Option<&'a str> {
    code.lines()
        .map(str::trim)
        .find(|l| l.starts_with(directive) && l[directive.len()..].starts_with(char::is_whitespace))
        .map(|l| l[directive.len()..].trim().split([',', ' ', ';']).next().unwrap_or(""))
}

/// Every `.entry NAME` of a source.
fn entries(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(".entry") {
        let after = &code[i + ".entry".len()..];
        if !after.starts_with(char::is_whitespace) {
            continue;
        }
        let name: String = after.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '$').collect();
        out.push(name);
    }
    out
}

#[test]
fn every_entry_constant_is_defined_in_its_module() {
    assert!(!MODULES.is_empty(), "no PTX module embedded");
    let mut seen = BTreeSet::new();
    for m in MODULES {
        let defined = entries(&code(m.ptx));
        assert_eq!(defined, m.entries, "{}: the table's entries differ from the source's", m.name);
        for e in m.entries {
            assert!(seen.insert(*e), "entry {e} defined twice");
            assert!(
                m.ptx.contains(&format!(".entry {e}(")) || m.ptx.contains(&format!(".entry {e} (")),
                "{}: no `.entry {e}(` in the source",
                m.name
            );
            assert_eq!(module_for_entry(e).map(|x| x.0), Some(m.name), "module_for_entry({e})");
        }
    }
}

#[test]
fn every_kernel_file_is_embedded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("kernels/ exists")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "ptx").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    let embedded: BTreeSet<String> = MODULES.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(files, embedded);
    for m in MODULES {
        let on_disk = std::fs::read_to_string(dir.join(format!("{}.ptx", m.name))).unwrap();
        assert_eq!(on_disk, m.ptx, "{}: embedded text is stale", m.name);
    }
}

#[test]
fn modules_target_turing_and_ptx_7_8_or_document_why() {
    for m in MODULES {
        let c = code(m.ptx);
        let version = directive(&c, ".version").unwrap_or_else(|| panic!("{}: no .version", m.name));
        let target = directive(&c, ".target").unwrap_or_else(|| panic!("{}: no .target", m.name));
        assert_eq!(directive(&c, ".address_size"), Some("64"), "{}: .address_size 64", m.name);
        let (major, minor) = version.split_once('.').unwrap_or_else(|| panic!("{}: bad .version {version}", m.name));
        let v = (major.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap());
        let sm: u32 = target
            .strip_prefix("sm_")
            .and_then(|t| t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).parse().ok())
            .unwrap_or_else(|| panic!("{}: bad .target {target}", m.name));
        let documented = m
            .ptx
            .lines()
            .any(|l| l.trim_start().starts_with("// needs-newer-target:") && l.split_once(':').is_some_and(|x| !x.1.trim().is_empty()));
        assert!(
            (v <= (7, 8) && sm <= 75) || documented,
            "{}: .version {version} .target {target} is newer than 7.8/sm_75 and the header gives no \
             `// needs-newer-target: <reason>`",
            m.name
        );
        let header: Vec<&str> = m.ptx.lines().take_while(|l| l.starts_with("//")).collect();
        assert!(header.len() >= 5, "{}: the file must open with a comment block (what, launch shape, CPU reference)", m.name);
        assert!(header.iter().any(|l| l.contains("src/backend/cpu/")), "{}: the header must name its CPU reference", m.name);
    }
}
