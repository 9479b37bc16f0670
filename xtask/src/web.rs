//! Builds the browser client into `web-client/dist/`, the directory the server serves at `/`.
//!
//! The steps: compile `web-client` for `wasm32-unknown-unknown` with cargo (release builds with
//! the `web-release` profile: size first, LTO); generate the JavaScript glue with wasm-bindgen
//! (as a library, so no `wasm-bindgen` binary has to be installed) into a staging directory,
//! with `web-client/static/` beside it; in release builds shrink wasm-bindgen's wasm with
//! binaryen's `wasm-opt -Oz` when it is installed (repairing what binaryen 108 gets wrong);
//! then give every file but `index.html` a content-hashed name under `dist/assets/`, rewriting
//! the references to it, and write a brotli (`.br`) and a gzip (`.gz`) copy beside each, which
//! the server picks from by `Accept-Encoding`. The layout is described in ARCHITECTURE.md (web
//! client).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use wasm_bindgen_cli_support::Bindgen;

const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The page every non-asset path serves; the only file that keeps its name.
const INDEX: &str = "index.html";
/// Where the hashed files go, below `dist/`.
const ASSETS: &str = "assets";

/// The cargo profile of release builds of the client (the workspace's Cargo.toml).
const RELEASE_PROFILE: &str = "web-release";

/// The features wasm-bindgen's output uses (rustc's defaults since Rust 1.82–1.87, and the
/// externref table), for binaryen 108, which rejects a module using any that is not enabled.
const WASM_OPT_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-reference-types",
    "--enable-multivalue",
];

/// Files whose text may name other files, and so get their references rewritten.
const TEXT_EXTENSIONS: &[&str] = &[
    "html",
    "js",
    "mjs",
    "css",
    "json",
    "svg",
    "webmanifest",
    "txt",
];

/// Builds `web-client/dist/` (`index.html` and `assets/`) and returns its path.
pub fn build_web_client(workspace_root: &Path, release: bool) -> Result<PathBuf> {
    ensure_wasm_target(workspace_root)?;
    let target_dir = target_dir(workspace_root)?;
    compile(workspace_root, &target_dir, release)?;

    let profile = if release { RELEASE_PROFILE } else { "debug" };
    let wasm = target_dir
        .join(WASM_TARGET)
        .join(profile)
        .join("web_client.wasm");
    let staging = target_dir.join("web-client-staging").join(profile);
    empty_dir(&staging)?;
    generate_glue(&wasm, &staging)?;
    if release {
        optimise_wasm(&staging.join("web_client_bg.wasm"))?;
    }
    copy_dir(&workspace_root.join("web-client").join("static"), &staging)?;

    let dist = workspace_root.join("web-client").join("dist");
    // Start empty, so that a file removed from static/ does not linger in dist/.
    empty_dir(&dist)?;
    let compression = if release {
        Compression::Smallest
    } else {
        Compression::Fast
    };
    hash_assets(&staging, &dist, compression)?;
    Ok(dist)
}

/// The `web` target emits an ES module whose default export fetches the .wasm beside it, which
/// is what the page imports. wasm-bindgen-cli-support is pinned to the same version as the
/// `wasm-bindgen` crate: it refuses a module built by any other version.
fn generate_glue(wasm: &Path, staging: &Path) -> Result<()> {
    Bindgen::new()
        .input_path(wasm)
        .web(true)?
        .omit_default_module_path(false)
        .typescript(false)
        .generate(staging)
        .with_context(|| format!("wasm-bindgen failed on {}", wasm.display()))
}

/// One built asset's size as served: raw, and its gzip and brotli copies when it has them.
pub struct AssetSize {
    pub name: String,
    pub raw: u64,
    pub gzip: Option<u64>,
    pub brotli: Option<u64>,
}

/// The size of every asset under `dist/assets/`, by name.
pub fn asset_sizes(dist: &Path) -> Result<Vec<AssetSize>> {
    let assets = dist.join(ASSETS);
    let mut rows = Vec::new();
    for entry in
        fs::read_dir(&assets).with_context(|| format!("cannot read {}", assets.display()))?
    {
        let path = entry?.path();
        let name = file_name(&path)?;
        if !path.is_file() || name.ends_with(".br") || name.ends_with(".gz") {
            continue;
        }
        let size = |suffix: &str| -> Result<Option<u64>> {
            let sibling = assets.join(format!("{name}{suffix}"));
            Ok(if sibling.exists() {
                Some(fs::metadata(&sibling)?.len())
            } else {
                None
            })
        };
        rows.push(AssetSize {
            raw: fs::metadata(&path)?.len(),
            gzip: size(".gz")?,
            brotli: size(".br")?,
            name,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// Prints the size of every asset as served: raw, gzip and brotli.
pub fn print_sizes(dist: &Path) -> Result<()> {
    let shown = |bytes: Option<u64>| bytes.map_or("-".to_owned(), |b| format!("{b}"));
    println!(
        "{:<40} {:>10} {:>10} {:>10}",
        "asset", "raw", "gzip", "brotli"
    );
    for asset in asset_sizes(dist)? {
        println!(
            "{:<40} {:>10} {:>10} {:>10}",
            asset.name,
            asset.raw,
            shown(asset.gzip),
            shown(asset.brotli)
        );
    }
    Ok(())
}

/// Shrinks wasm-bindgen's wasm in place with binaryen's `wasm-opt -Oz`, when it is installed.
fn optimise_wasm(wasm: &Path) -> Result<()> {
    let wasm_opt = std::env::var_os("WASM_OPT").unwrap_or_else(|| OsString::from("wasm-opt"));
    if Command::new(&wasm_opt).arg("--version").output().is_err() {
        println!(
            "note: wasm-opt not found, the release wasm is not optimised \
             (install it with `apt-get install -y binaryen`)"
        );
        return Ok(());
    }
    let original = fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let optimised_path = wasm.with_extension("opt.wasm");
    // -Oz: as small as -O3 once compressed for this client, and smaller raw.
    let status = Command::new(&wasm_opt)
        .arg("-Oz")
        .args(WASM_OPT_FEATURES)
        .arg(wasm)
        .arg("-o")
        .arg(&optimised_path)
        .status()
        .with_context(|| format!("cannot run {}", wasm_opt.to_string_lossy()))?;
    if !status.success() {
        bail!("wasm-opt failed on {} ({status})", wasm.display());
    }
    let mut optimised = fs::read(&optimised_path)?;
    let repaired = repair_table_exports(&original, &mut optimised)?;
    fs::write(wasm, &optimised)?;
    fs::remove_file(&optimised_path)?;
    println!(
        "wasm-opt -Oz: {} bytes -> {} bytes{}",
        original.len(),
        optimised.len(),
        if repaired > 0 {
            format!(" ({repaired} table export(s) re-pointed)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The tables of a module (imported ones first, as they are numbered) and the table exports,
/// each with where its index is written.
struct TableMap {
    tables: Vec<wasmparser::RefType>,
    /// Name, table index, and the byte offset of the index in the module.
    exports: Vec<(String, u32, usize)>,
}

fn table_map(module: &[u8]) -> Result<TableMap> {
    let mut map = TableMap {
        tables: Vec::new(),
        exports: Vec::new(),
    };
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload? {
            wasmparser::Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    if let wasmparser::TypeRef::Table(table) = import?.ty {
                        map.tables.push(table.element_type);
                    }
                }
            }
            wasmparser::Payload::TableSection(tables) => {
                for table in tables {
                    map.tables.push(table?.ty.element_type);
                }
            }
            wasmparser::Payload::ExportSection(exports) => {
                for export in exports.into_iter_with_offsets() {
                    let (offset, export) = export?;
                    if export.kind != wasmparser::ExternalKind::Table {
                        continue;
                    }
                    // The name (its length, then its bytes) and the kind byte come first.
                    let name_length = export.name.len();
                    let index_at = offset + leb128_length(name_length as u64) + name_length + 1;
                    map.exports
                        .push((export.name.to_owned(), export.index, index_at));
                }
            }
            _ => {}
        }
    }
    Ok(map)
}

fn leb128_length(mut value: u64) -> usize {
    let mut length = 1;
    while value >= 0x80 {
        value >>= 7;
        length += 1;
    }
    length
}

/// Binaryen 108 (Debian 12) writes every table export of a module with two tables (the
/// functions' and wasm-bindgen's externref table) as table 0: the page then hands the
/// function table to the glue as the externref table and cannot start. Each table export of the
/// optimised module that names a table of another element type than it named in `original` is
/// pointed back at the table of the right type (in place: the index keeps its byte length).
/// Returns how many were re-pointed; a binaryen without the bug leaves nothing to do.
fn repair_table_exports(original: &[u8], optimised: &mut [u8]) -> Result<usize> {
    let before = table_map(original)?;
    let after = table_map(optimised)?;
    let mut repaired = 0;
    for (name, index, index_at) in &after.exports {
        let Some(wanted) = before
            .exports
            .iter()
            .find(|(before_name, _, _)| before_name == name)
            .and_then(|(_, before_index, _)| before.tables.get(*before_index as usize))
        else {
            continue;
        };
        if after.tables.get(*index as usize) == Some(wanted) {
            continue;
        }
        let candidates: Vec<usize> = after
            .tables
            .iter()
            .enumerate()
            .filter(|(_, element_type)| *element_type == wanted)
            .map(|(candidate, _)| candidate)
            .collect();
        let [target] = candidates.as_slice() else {
            bail!(
                "wasm-opt changed the table of export {name:?} and no single table of its type is left"
            );
        };
        if leb128_length(*target as u64) != leb128_length(u64::from(*index)) {
            bail!("cannot re-point export {name:?} to table {target} in place");
        }
        let Some(slot) = optimised.get_mut(*index_at) else {
            bail!("export {name:?} lies outside the module");
        };
        // One byte: both indices are below 128 (checked above).
        *slot = u8::try_from(*target)?;
        repaired += 1;
    }
    Ok(repaired)
}

#[derive(Clone, Copy)]
enum Compression {
    /// For release builds: the smallest files, at a few seconds per build.
    Smallest,
    /// For debug builds: the same layout at a fraction of the time.
    Fast,
}

/// Copies `staging` into `dist`: `index.html` at the top, every other top-level file under
/// `assets/` as `<stem>-<hash8>.<ext>`, and subdirectories (wasm-bindgen's `snippets/`, whose
/// directory names are already hashes) under `assets/` as they are. A file is hashed after the
/// files it names, with their new names written into it, so that a changed wasm changes the
/// name of the glue that loads it, and of `boot.js` that imports the glue.
fn hash_assets(staging: &Path, dist: &Path, compression: Compression) -> Result<()> {
    let assets = dist.join(ASSETS);
    fs::create_dir_all(&assets)?;

    let mut pending: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for entry in
        fs::read_dir(staging).with_context(|| format!("cannot read {}", staging.display()))?
    {
        let path = entry?.path();
        let name = file_name(&path)?;
        if path.is_dir() {
            copy_dir_into(&path, &assets.join(&name))?;
        } else if name != INDEX {
            pending.insert(name, fs::read(&path)?);
        }
    }

    // Original name -> hashed name, filled in dependency order.
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    while !pending.is_empty() {
        let ready: Vec<String> = pending
            .iter()
            .filter(|(name, content)| {
                !is_text(name)
                    || pending
                        .keys()
                        .all(|other| other == *name || !mentions(content, other))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if ready.is_empty() {
            bail!(
                "the files {:?} name each other, so none can be hashed first",
                pending.keys().collect::<Vec<_>>()
            );
        }
        for name in ready {
            let Some(mut content) = pending.remove(&name) else {
                continue;
            };
            if is_text(&name) {
                content = rewrite(&content, &renamed, "")?;
            }
            let hashed = hashed_name(&name, &content);
            fs::write(assets.join(&hashed), &content)?;
            renamed.insert(name, hashed);
        }
    }

    let index = staging.join(INDEX);
    if !index.exists() {
        bail!("{} is missing", index.display());
    }
    let html = rewrite(&fs::read(&index)?, &renamed, &format!("{ASSETS}/"))?;
    fs::write(dist.join(INDEX), html)?;

    compress_dir(&assets, compression)
}

fn is_text(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| TEXT_EXTENSIONS.contains(&ext))
}

/// Whether a file name is a character of a longer file name, so that `style.css` is not
/// found inside `mystyle.css` nor `app.js` inside `app.json`.
fn is_name_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.')
}

/// Byte offsets where `name` occurs in `text` as a whole file name.
fn occurrences(text: &[u8], name: &str) -> Vec<usize> {
    let needle = name.as_bytes();
    let mut found = Vec::new();
    if needle.is_empty() || needle.len() > text.len() {
        return found;
    }
    for start in 0..=text.len() - needle.len() {
        if &text[start..start + needle.len()] != needle {
            continue;
        }
        let before_ok = start == 0 || !is_name_char(text[start - 1]);
        let end = start + needle.len();
        let after_ok = end == text.len() || !is_name_char(text[end]);
        if before_ok && after_ok {
            found.push(start);
        }
    }
    found
}

fn mentions(text: &[u8], name: &str) -> bool {
    !occurrences(text, name).is_empty()
}

/// Replaces every whole-name reference to a renamed file by `prefix` + its new name.
fn rewrite(content: &[u8], renamed: &BTreeMap<String, String>, prefix: &str) -> Result<Vec<u8>> {
    let text = std::str::from_utf8(content).context("a text asset is not UTF-8")?;
    let mut replacements: Vec<(usize, usize, String)> = Vec::new();
    for (from, to) in renamed {
        for start in occurrences(text.as_bytes(), from) {
            replacements.push((start, from.len(), format!("{prefix}{to}")));
        }
    }
    replacements.sort_by_key(|(start, _, _)| *start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, len, to) in replacements {
        // Overlaps cannot happen between whole names; skip one rather than garble the text.
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(&to);
        at = start + len;
    }
    out.push_str(&text[at..]);
    Ok(out.into_bytes())
}

/// `web_client_bg.wasm` -> `web_client_bg-1a2b3c4d.wasm`, from the SHA-256 of the content.
fn hashed_name(name: &str, content: &[u8]) -> String {
    let digest = Sha256::digest(content);
    let hash: String = digest
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{hash}.{ext}"),
        _ => format!("{name}-{hash}"),
    }
}

/// Writes `<file>.br` and `<file>.gz` beside every file under `dir`.
fn compress_dir(dir: &Path, compression: Compression) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            compress_dir(&path, compression)?;
            continue;
        }
        let content = fs::read(&path)?;
        let name = file_name(&path)?;
        fs::write(
            dir.join(format!("{name}.br")),
            brotli(&content, compression)?,
        )?;
        fs::write(dir.join(format!("{name}.gz")), gzip(&content, compression)?)?;
    }
    Ok(())
}

fn brotli(content: &[u8], compression: Compression) -> Result<Vec<u8>> {
    let quality = match compression {
        Compression::Smallest => 11,
        Compression::Fast => 4,
    };
    let params = ::brotli::enc::BrotliEncoderParams {
        quality,
        lgwin: 22,
        ..Default::default()
    };
    let mut out = Vec::new();
    ::brotli::BrotliCompress(&mut &content[..], &mut out, &params)
        .context("brotli compression failed")?;
    Ok(out)
}

fn gzip(content: &[u8], compression: Compression) -> Result<Vec<u8>> {
    let level = match compression {
        Compression::Smallest => flate2::Compression::best(),
        Compression::Fast => flate2::Compression::fast(),
    };
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
    encoder.write_all(content)?;
    Ok(encoder.finish()?)
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))
}

fn empty_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Fails early, with the fix, when the wasm standard library is not installed: cargo's own
/// error ("can't find crate for `core`") does not say what to do.
fn ensure_wasm_target(workspace_root: &Path) -> Result<()> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    // Run from the workspace so that rustup picks the toolchain in rust-toolchain.toml.
    let output = Command::new(&rustc)
        .current_dir(workspace_root)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .with_context(|| format!("cannot run {}", rustc.to_string_lossy()))?;
    let libdir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || libdir.is_empty() || !Path::new(&libdir).is_dir() {
        bail!(
            "the {WASM_TARGET} target is not installed; \
             run `rustup target add {WASM_TARGET}` and try again"
        );
    }
    Ok(())
}

/// Where cargo puts build output: `$CARGO_TARGET_DIR`, or `target/` in the workspace.
/// It is passed to cargo explicitly, so the .wasm is found where it was built.
pub(crate) fn target_dir(workspace_root: &Path) -> Result<PathBuf> {
    match std::env::var_os("CARGO_TARGET_DIR") {
        // Relative paths are relative to where cargo is run from, as cargo does it.
        Some(dir) => Ok(std::env::current_dir()
            .context("cannot read the current directory")?
            .join(dir)),
        None => Ok(workspace_root.join("target")),
    }
}

fn compile(workspace_root: &Path, target_dir: &Path, release: bool) -> Result<()> {
    // Under `cargo run`, CARGO is the cargo that runs us, with the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace_root)
        .args(["build", "-p", "web-client", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    if release {
        command.args(["--profile", RELEASE_PROFILE]);
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("building web-client for {WASM_TARGET} failed ({status})");
    }
    Ok(())
}

/// Copies the files of `from` into `to`, keeping subdirectories.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let entries = fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", from.display()))?;
        let source = entry.path();
        let destination = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            fs::create_dir_all(&destination)
                .with_context(|| format!("cannot create {}", destination.display()))?;
            copy_dir(&source, &destination)?;
        } else {
            fs::copy(&source, &destination).with_context(|| {
                format!(
                    "cannot copy {} to {}",
                    source.display(),
                    destination.display()
                )
            })?;
        }
    }
    Ok(())
}

fn copy_dir_into(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    copy_dir(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect()
    }

    #[test]
    fn hashed_names_keep_stem_and_extension() {
        let name = hashed_name("web_client_bg.wasm", b"abc");
        // SHA-256 of "abc" starts ba7816bf.
        assert_eq!(name, "web_client_bg-ba7816bf.wasm");
    }

    #[test]
    fn only_whole_file_names_are_rewritten() {
        let text =
            br#"<link href="style.css"><link href="mystyle.css"><script src="./boot.js"></script>"#;
        let map = renamed(&[
            ("style.css", "style-11111111.css"),
            ("boot.js", "boot-22222222.js"),
        ]);
        let out = rewrite(text, &map, "assets/").unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"<link href="assets/style-11111111.css"><link href="mystyle.css"><script src="./assets/boot-22222222.js"></script>"#
        );
    }

    #[test]
    fn the_glue_is_hashed_after_the_wasm_it_loads_and_boot_after_the_glue() -> Result<()> {
        let root = std::env::temp_dir().join(format!("xtask-web-{}", std::process::id()));
        let (staging, dist) = (root.join("staging"), root.join("dist"));
        empty_dir(&staging)?;
        empty_dir(&dist)?;
        fs::write(staging.join("web_client_bg.wasm"), b"\0asm-v1")?;
        fs::write(
            staging.join("web_client.js"),
            "fetch(new URL('web_client_bg.wasm', import.meta.url));",
        )?;
        fs::write(
            staging.join("boot.js"),
            "import init from './web_client.js'; init();",
        )?;
        fs::write(staging.join("style.css"), "body { margin: 0 }")?;
        fs::write(
            staging.join(INDEX),
            r#"<link rel="stylesheet" href="style.css"><script type="module" src="boot.js"></script>"#,
        )?;
        hash_assets(&staging, &dist, Compression::Fast)?;

        let wasm = hashed_name("web_client_bg.wasm", b"\0asm-v1");
        let glue_text = format!("fetch(new URL('{wasm}', import.meta.url));");
        let glue = hashed_name("web_client.js", glue_text.as_bytes());
        let boot_text = format!("import init from './{glue}'; init();");
        let boot = hashed_name("boot.js", boot_text.as_bytes());
        let css = hashed_name("style.css", b"body { margin: 0 }");
        let assets = dist.join(ASSETS);
        assert_eq!(fs::read_to_string(assets.join(&glue))?, glue_text);
        assert_eq!(fs::read_to_string(assets.join(&boot))?, boot_text);
        assert_eq!(
            fs::read_to_string(dist.join(INDEX))?,
            format!(
                r#"<link rel="stylesheet" href="assets/{css}"><script type="module" src="assets/{boot}"></script>"#
            )
        );
        for name in [&wasm, &glue, &boot, &css] {
            assert!(assets.join(format!("{name}.br")).exists(), "{name}.br");
            assert!(assets.join(format!("{name}.gz")).exists(), "{name}.gz");
        }
        fs::remove_dir_all(&root)?;
        Ok(())
    }

    /// A module with a function table and an externref table, exporting table `index` as "t".
    fn two_tables_exporting(index: u8) -> Vec<u8> {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        // Table section: funcref (min 1), externref (min 1).
        module.extend([4, 7, 2, 0x70, 0, 1, 0x6f, 0, 1]);
        // Export section: "t", a table, `index`.
        module.extend([7, 5, 1, 1, b't', 1, index]);
        module
    }

    #[test]
    fn a_table_export_binaryen_misnumbered_is_pointed_back() -> Result<()> {
        let original = two_tables_exporting(1);
        let mut optimised = two_tables_exporting(0);
        assert_eq!(repair_table_exports(&original, &mut optimised)?, 1);
        assert_eq!(optimised, original);
        // Nothing to do when the export is right.
        assert_eq!(repair_table_exports(&original, &mut optimised)?, 0);
        assert_eq!(optimised, original);
        Ok(())
    }

    #[test]
    fn compressed_copies_decompress_to_the_original() -> Result<()> {
        let original = "chat ".repeat(1000).into_bytes();
        let gz = gzip(&original, Compression::Smallest)?;
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped)?;
        assert_eq!(unzipped, original);
        let br = brotli(&original, Compression::Smallest)?;
        let mut unbrotlied = Vec::new();
        ::brotli::BrotliDecompress(&mut &br[..], &mut unbrotlied)?;
        assert_eq!(unbrotlied, original);
        assert!(br.len() < original.len() / 10);
        Ok(())
    }
}
