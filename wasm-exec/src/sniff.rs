//! Content sniffing of an entrypoint: `\0asm` plus the version/layer bytes tell a core
//! module from a component; ELF and `#!` mean a native program. crun's smart variants look
//! only at the file name, which misfires both ways; the header does not.

use std::io::Read;
use std::path::Path;

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A WebAssembly core module (version 1).
    WasmModule,
    /// A WebAssembly component (component-model layer 1).
    WasmComponent,
    /// An ELF executable.
    Elf,
    /// A script with a `#!` interpreter line.
    Script,
    /// Anything else, including files too short to tell.
    Unknown,
}

impl BinaryKind {
    pub fn is_wasm(self) -> bool {
        matches!(self, BinaryKind::WasmModule | BinaryKind::WasmComponent)
    }
}

/// Classifies a file by its first 8 bytes.
pub fn sniff(head: &[u8]) -> BinaryKind {
    match head {
        // magic, then a 2-byte version and a 2-byte layer: 1/0 is a core module, 0x0d/1 a component.
        [0, b'a', b's', b'm', 1, 0, 0, 0, ..] => BinaryKind::WasmModule,
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => BinaryKind::WasmComponent,
        [0x7f, b'E', b'L', b'F', ..] => BinaryKind::Elf,
        [b'#', b'!', ..] => BinaryKind::Script,
        _ => BinaryKind::Unknown,
    }
}

/// Reads the head of `path` and classifies it.
pub fn sniff_file(path: &Path) -> std::io::Result<BinaryKind> {
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(sniff(&head[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_modules_components_and_native_files() {
        assert_eq!(sniff(b"\0asm\x01\0\0\0\x01"), BinaryKind::WasmModule);
        assert_eq!(sniff(b"\0asm\x0d\0\x01\0"), BinaryKind::WasmComponent);
        assert_eq!(sniff(b"\x7fELF\x02\x01\x01\0"), BinaryKind::Elf);
        assert_eq!(sniff(b"#!/bin/sh\n"), BinaryKind::Script);
        // A truncated header or a `.wasm` name with other content is not Wasm.
        assert_eq!(sniff(b"\0asm"), BinaryKind::Unknown);
        assert_eq!(sniff(b"hello world"), BinaryKind::Unknown);
        assert!(!BinaryKind::Elf.is_wasm());
    }

    #[test]
    fn sniffs_files_by_content_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("app.wasm");
        std::fs::write(&fake, b"#!/bin/sh\necho hi\n").unwrap();
        assert_eq!(sniff_file(&fake).unwrap(), BinaryKind::Script);
        let real = dir.path().join("app");
        std::fs::write(&real, b"\0asm\x01\0\0\0").unwrap();
        assert_eq!(sniff_file(&real).unwrap(), BinaryKind::WasmModule);
    }
}
