//! Empty: the package only pins the glslang sources (see Cargo.toml).
