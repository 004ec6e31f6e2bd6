//! The committed SPIR-V is what its sources compile to.
//!
//! `shaders/spv/MANIFEST` (written by `ci/build-shaders.sh`) records the SHA-256 of every shader
//! source and of every `.spv`, with the compiler version and options. Always checked: the sources
//! and the `.spv` files match the manifest, and the crate embeds exactly the manifest's shaders.
//! When `TESSERA_GLSLANG` points at glslangValidator (ci/test.sh installs the pinned one with
//! ci/install-glslang.sh and sets it), every shader is also recompiled and compared byte for byte. And each
//! shader's Rust specialization struct declares exactly the constants of its source (ids, names
//! and default values).

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tessera_vulkan::SpecConstant;

const FIX: &str = "run ci/build-shaders.sh and commit kernels-vulkan/shaders/spv/";

/// Overrides where the shader sources are looked for (the tests below use it to check that
/// missing sources are a skip).
const SHADERS_DIR_ENV: &str = "TESSERA_VULKAN_SHADERS_DIR";

/// The shader sources and the manifest: `kernels-vulkan/shaders` of the checkout the test was
/// built from. `None`, after printing `skipped: <why>`, where they are not there (a test binary
/// carried to another machine, as the GPU machine's run does): these tests check the checkout,
/// not the device.
fn shaders_dir() -> Option<PathBuf> {
    let dir = std::env::var_os(SHADERS_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders"));
    if dir.join("spv/MANIFEST").is_file() {
        Some(dir)
    } else {
        println!(
            "skipped: the shader sources are not here ({} has no spv/MANIFEST; a test binary \
             away from its checkout)",
            dir.display()
        );
        None
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display())))
}

struct Spirv {
    file: String,
    sha: String,
    source: String,
    extra_options: Vec<String>,
}

struct Manifest {
    compiler: String,
    options: Vec<String>,
    sources: BTreeMap<String, String>,
    spirv: Vec<Spirv>,
}

fn manifest(dir: &Path) -> Manifest {
    let path = dir.join("spv/MANIFEST");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}; {FIX}", path.display()));
    let mut m = Manifest {
        compiler: String::new(),
        options: Vec::new(),
        sources: BTreeMap::new(),
        spirv: Vec::new(),
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["compiler", "glslangValidator", version] => m.compiler = version.to_string(),
            ["options", rest @ ..] => m.options = rest.iter().map(|s| s.to_string()).collect(),
            ["source", file, sha] => {
                m.sources.insert(file.to_string(), sha.to_string());
            }
            ["spirv", file, sha, source, extra @ ..] => m.spirv.push(Spirv {
                file: file.to_string(),
                sha: sha.to_string(),
                source: source.to_string(),
                extra_options: extra.iter().map(|s| s.to_string()).collect(),
            }),
            _ => panic!("unexpected manifest line {line:?}"),
        }
    }
    assert!(!m.compiler.is_empty(), "the manifest names no compiler");
    m
}

fn files_with(dir: &Path, extensions: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| extensions.iter().any(|ext| n.ends_with(ext)))
        .collect();
    names.sort();
    names
}

#[test]
fn sources_match_the_manifest() {
    let Some(dir) = shaders_dir() else { return };
    let m = manifest(&dir);
    let on_disk = files_with(&dir, &[".comp", ".glsl"]);
    let listed: Vec<String> = m.sources.keys().cloned().collect();
    assert_eq!(
        on_disk, listed,
        "the shader sources differ from the manifest's list; {FIX}"
    );
    for (file, sha) in &m.sources {
        assert_eq!(
            &sha256_file(&dir.join(file)),
            sha,
            "kernels-vulkan/shaders/{file} changed since its SPIR-V was built; {FIX}"
        );
    }
}

#[test]
fn committed_and_embedded_spirv_match_the_manifest() {
    let Some(dir) = shaders_dir() else { return };
    let m = manifest(&dir);
    let spv_dir = dir.join("spv");
    let on_disk = files_with(&spv_dir, &[".spv"]);
    let mut listed: Vec<String> = m.spirv.iter().map(|s| s.file.clone()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "spv/ differs from the manifest's list; {FIX}"
    );
    for s in &m.spirv {
        assert_eq!(
            sha256_file(&spv_dir.join(&s.file)),
            s.sha,
            "spv/{} does not match the manifest; {FIX}",
            s.file
        );
        assert!(
            m.sources.contains_key(&s.source),
            "spv/{} comes from {}, which the manifest does not list",
            s.file,
            s.source
        );
    }
    let embedded = tessera_vulkan::shaders::all();
    for shader in &embedded {
        let file = format!("{}.spv", shader.name);
        let entry = m
            .spirv
            .iter()
            .find(|s| s.file == file)
            .unwrap_or_else(|| panic!("the crate embeds {file}, which the manifest lacks"));
        assert_eq!(
            sha256(shader.spirv),
            entry.sha,
            "the embedded {file} differs from the manifest (stale build?)"
        );
    }
    for s in &m.spirv {
        assert!(
            embedded.iter().any(|e| format!("{}.spv", e.name) == s.file),
            "spv/{} is not embedded: add it to tessera_vulkan::shaders::all()",
            s.file
        );
    }
}

#[test]
fn spirv_recompiles_identically() {
    let Some(dir) = shaders_dir() else { return };
    let Ok(glslang) = std::env::var("TESSERA_GLSLANG") else {
        println!("skipped: TESSERA_GLSLANG is not set (ci/test.sh sets it)");
        return;
    };
    let m = manifest(&dir);
    let glslang = PathBuf::from(glslang);
    let run = |args: &[String]| {
        Command::new(&glslang)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", glslang.display()))
    };
    let version = String::from_utf8_lossy(&run(&["--version".to_string()]).stdout).into_owned();
    let found = version
        .lines()
        .find_map(|l| l.strip_prefix("Glslang Version: "))
        .and_then(|v| v.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    assert_eq!(
        found,
        m.compiler,
        "{} is glslang {found}, the manifest was made with {}",
        glslang.display(),
        m.compiler
    );
    let out_dir = std::env::temp_dir().join(format!("tessera-spirv-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut differing = Vec::new();
    for s in &m.spirv {
        let out = out_dir.join(&s.file);
        let mut args = vec!["--quiet".to_string()];
        args.extend(m.options.iter().cloned());
        args.extend(s.extra_options.iter().cloned());
        args.push(s.source.clone());
        args.push("-o".to_string());
        args.push(out.display().to_string());
        let result = run(&args);
        assert!(
            result.status.success(),
            "compiling {}: {}{}",
            s.source,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr)
        );
        let fresh = std::fs::read(&out).unwrap();
        let committed = std::fs::read(dir.join("spv").join(&s.file)).unwrap();
        if fresh != committed {
            differing.push(s.file.clone());
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        differing.is_empty(),
        "recompiled SPIR-V differs from the committed files {differing:?}; {FIX}"
    );
}

/// A specialization constant declared in a GLSL source: `layout(constant_id = ID) const uint
/// NAME = DEFAULT;`, or `layout(local_size_x = DEFAULT, local_size_x_id = ID) in;` (named
/// `local_size_x_id`, as [`SpecConstant::LOCAL_SIZE_X`]).
type Declared = (u32, String, u32);

/// Removes `// ...` and `/* ... */` comments.
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    loop {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b..].find("*/").map_or("", |e| &rest[b + e + 2..]);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// A GLSL integer or boolean literal (`128`, `128u`, `0x10u`, `true`).
fn literal(text: &str) -> Option<u32> {
    let t = text.trim().trim_end_matches(['u', 'U']);
    match t {
        "true" => Some(1),
        "false" => Some(0),
        _ => match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => t.parse().ok(),
        },
    }
}

/// Every specialization constant `source` declares, sorted by id.
fn declared_constants(source: &str) -> Vec<Declared> {
    let text = strip_comments(source);
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("layout") {
        rest = &rest[start + "layout".len()..];
        let Some(open) = rest.trim_start().strip_prefix('(') else {
            continue;
        };
        let close = open.find(')').expect("an unclosed layout(");
        let qualifiers: Vec<(&str, &str)> = open[..close]
            .split(',')
            .map(|q| {
                q.split_once('=')
                    .map_or((q.trim(), ""), |(k, v)| (k.trim(), v.trim()))
            })
            .collect();
        let after = &open[close + 1..];
        let get = |key: &str| qualifiers.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if let Some(id) = get("constant_id") {
            // `const TYPE NAME = VALUE;`
            let declaration = &after[..after.find(';').expect("a declaration without ;")];
            let (lhs, value) = declaration
                .split_once('=')
                .unwrap_or_else(|| panic!("no default value in {declaration:?}"));
            let name = lhs.split_whitespace().last().unwrap().to_string();
            found.push((
                literal(id).unwrap_or_else(|| panic!("constant_id {id:?}")),
                name,
                literal(value).unwrap_or_else(|| panic!("default {value:?} of a constant")),
            ));
        }
        for axis in ["x", "y", "z"] {
            if let Some(id) = get(&format!("local_size_{axis}_id")) {
                let size = get(&format!("local_size_{axis}")).unwrap_or("1");
                found.push((
                    literal(id).unwrap_or_else(|| panic!("local_size_{axis}_id {id:?}")),
                    format!("local_size_{axis}_id"),
                    literal(size).unwrap_or_else(|| panic!("local_size_{axis} {size:?}")),
                ));
            }
        }
        rest = after;
    }
    found.sort();
    found
}

#[test]
fn glsl_declarations_are_read() {
    let source = "// layout(constant_id = 9) const uint COMMENTED = 1u;
        layout(local_size_x = 128, local_size_x_id = 0) in;
        layout (constant_id = 2) const uint KT = 8u; /* layout(constant_id = 7) */
        layout(constant_id = 1) const bool FLAG = true;
        layout(set = 0, binding = 0) buffer B { uint words[]; };";
    assert_eq!(
        declared_constants(source),
        vec![
            (0, "local_size_x_id".to_string(), 128),
            (1, "FLAG".to_string(), 1),
            (2, "KT".to_string(), 8),
        ]
    );
    assert_eq!(SpecConstant::LOCAL_SIZE_X, "local_size_x_id");
}

/// Each embedded shader's specialization struct (its `Specialization::constants` of the
/// default) lists the constants its GLSL source declares: the same ids, names and default
/// values, none missing, none extra.
#[test]
fn specialization_structs_match_the_glsl_constant_ids() {
    let Some(dir) = shaders_dir() else { return };
    let m = manifest(&dir);
    let mut mismatches = Vec::new();
    for shader in tessera_vulkan::shaders::all() {
        let file = format!("{}.spv", shader.name);
        let entry = m
            .spirv
            .iter()
            .find(|s| s.file == file)
            .unwrap_or_else(|| panic!("the manifest lacks {file}"));
        let path = dir.join(&entry.source);
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let glsl = declared_constants(&source);
        let mut rust: Vec<Declared> = shader
            .constants
            .iter()
            .map(|c| (c.id, c.glsl_name.to_string(), c.value))
            .collect();
        rust.sort();
        if rust != glsl {
            mismatches.push(format!(
                "{} ({}):\n  Rust (id, name, default): {rust:?}\n  GLSL: {glsl:?}",
                shader.name, entry.source
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "specialization structs that differ from their shader sources (fix the struct's \
         `Specialization::constants` or its `Default`):\n{}",
        mismatches.join("\n")
    );
}

/// Away from the checkout (the shader sources absent), every test of this file skips with the
/// reason instead of failing: the GPU machine runs test binaries without the sources.
#[test]
fn missing_sources_are_a_skip_not_a_failure() {
    if std::env::var_os(SHADERS_DIR_ENV).is_some() {
        return; // this is the child below
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--test-threads=1", "--nocapture"])
        .env(SHADERS_DIR_ENV, "/nonexistent/tessera-shaders")
        .env("TESSERA_GLSLANG", "/nonexistent/glslangValidator")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the tests fail without the sources:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout
            .matches("skipped: the shader sources are not here")
            .count(),
        4,
        "{stdout}"
    );
}
