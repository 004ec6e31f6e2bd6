//! A development aid: runs one compute shader from a SPIR-V file on the Vulkan backend's device
//! with buffers read from and written to files, so that small shaders (one primitive each, or
//! a variant of an op's shader) can be tried on a GPU machine that has no Rust or shader
//! toolchain: compile here, carry the `.spv` and this binary there, check the outputs with any
//! script.
//!
//! ```text
//! spirv_run --spv FILE.spv [--local N] [--spec ID=VALUE]... [--shared BYTES]
//!           [--push WORD[,WORD]...] (--in FILE | --out BYTES:FILE)... --groups X[,Y[,Z]]
//!           [--repeat N]
//! spirv_run --info
//! ```
//! - bindings `0..` of set 0 are the `--in` / `--out` buffers in the order given (device-local
//!   storage buffers; `--in` uploads the file, `--out` starts zeroed and is written to FILE);
//! - `--push` words are u32 (`7`, `0x10`) or f32 (`f1.5`);
//! - `--local N` sets `local_size_x_id = 0` to N (the invocation count checked against the
//!   device's limit; default 128); `--spec` sets `constant_id`s;
//! - `--repeat N` records the dispatch N more times (a barrier between each) after the checked
//!   one and prints the mean time per dispatch (wall clock of one submission);
//! - with `TESSERA_VULKAN_PIPELINE_STATS=1` the pipeline's statistics are printed first
//!   (`statistic NAME: VALUE`, where the device has them);
//! - `--info` prints the device's summary and its `VK_NV_cooperative_matrix2` flexible-dimension
//!   configurations (`VulkanFeatures::cooperative_matrix_flexible`).

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;
use tessera_vulkan::ash::vk;
use tessera_vulkan::pipeline::compute_barrier;
use tessera_vulkan::{
    Buffer, MemoryLocation, Shader, ShaderResources, SpecConstant, Specialization, VulkanBackend,
};

/// The specialization constants given on the command line: up to 16 `(id, value)` pairs.
#[derive(Clone, Copy, Debug, Default)]
struct RawSpec {
    count: usize,
    pairs: [(u32, u32); 16],
    local: u32,
    shared: u32,
}

impl Specialization for RawSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        let mut v = vec![SpecConstant::local_size_x(0, self.local)];
        v.extend(
            self.pairs[..self.count]
                .iter()
                .map(|&(id, value)| SpecConstant::new(id, "raw", value)),
        );
        v
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.local,
            shared_memory_bytes: self.shared,
        }
    }
}

enum Binding {
    In(String),
    Out(u64, String),
}

struct Args {
    spv: String,
    spec: RawSpec,
    push: Vec<u32>,
    bindings: Vec<Binding>,
    groups: [u32; 3],
    repeat: u32,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = if let Some(h) = s.strip_prefix("0x") {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|e| format!("{s}: {e}"))
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        spv: String::new(),
        spec: RawSpec {
            local: 128,
            ..Default::default()
        },
        push: Vec::new(),
        bindings: Vec::new(),
        groups: [1, 1, 1],
        repeat: 0,
    };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--spv" => a.spv = value()?,
            "--local" => a.spec.local = parse_u32(&value()?)?,
            "--shared" => a.spec.shared = parse_u32(&value()?)?,
            "--repeat" => a.repeat = parse_u32(&value()?)?,
            "--spec" => {
                let v = value()?;
                let (id, val) = v.split_once('=').ok_or(format!("--spec {v}: ID=VALUE"))?;
                if a.spec.count == a.spec.pairs.len() {
                    return Err("at most 16 --spec".into());
                }
                a.spec.pairs[a.spec.count] = (parse_u32(id)?, parse_u32(val)?);
                a.spec.count += 1;
            }
            "--push" => {
                for w in value()?.split(',') {
                    a.push.push(match w.strip_prefix('f') {
                        Some(f) => f.parse::<f32>().map_err(|e| format!("{w}: {e}"))?.to_bits(),
                        None => parse_u32(w)?,
                    });
                }
            }
            "--in" => a.bindings.push(Binding::In(value()?)),
            "--out" => {
                let v = value()?;
                let (bytes, path) = v.split_once(':').ok_or(format!("--out {v}: BYTES:FILE"))?;
                let bytes = bytes.parse().map_err(|e| format!("{bytes}: {e}"))?;
                a.bindings.push(Binding::Out(bytes, path.to_string()));
            }
            "--groups" => {
                for (i, g) in value()?.split(',').enumerate().take(3) {
                    a.groups[i] = parse_u32(g)?;
                }
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.spv.is_empty() {
        return Err("--spv is required".into());
    }
    Ok(a)
}

fn print_info(backend: &VulkanBackend) {
    let f = backend.features();
    println!("{}", f.summary());
    println!(
        "VK_NV_cooperative_matrix2: {}; {} flexible-dimension configurations",
        if f.cooperative_matrix2_nv {
            "enabled"
        } else {
            "not enabled"
        },
        f.cooperative_matrix_flexible.len()
    );
    for c in &f.cooperative_matrix_flexible {
        println!(
            "  M/{} N/{} K/{} {:?}·{:?}+{:?}->{:?} {} {}",
            c.m_granularity,
            c.n_granularity,
            c.k_granularity,
            c.a,
            c.b,
            c.c,
            c.result,
            if c.workgroup_scope {
                "workgroup of"
            } else {
                "subgroup"
            },
            c.workgroup_invocations
        );
    }
}

fn run(a: Args) -> Result<(), String> {
    let backend = VulkanBackend::new().map_err(|e| e.to_string())?;
    let ctx = backend.context().clone();
    let spirv: &'static [u8] = Box::leak(
        std::fs::read(&a.spv)
            .map_err(|e| format!("{}: {e}", a.spv))?
            .into_boxed_slice(),
    );
    let shader: Shader<RawSpec> = Shader {
        name: Box::leak(a.spv.clone().into_boxed_str()),
        spirv,
        storage_buffers: a.bindings.len() as u32,
        push_constant_bytes: 4 * a.push.len() as u32,
        specialization: PhantomData,
    };
    let pipeline = backend
        .pipelines()
        .get(&shader, &a.spec)
        .map_err(|e| e.to_string())?;
    for (name, value) in pipeline.statistics() {
        println!("statistic {name}: {value}");
    }
    let mut buffers = Vec::new();
    for b in &a.bindings {
        let buf = match b {
            Binding::In(path) => {
                let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
                upload(&ctx, &data)?
            }
            Binding::Out(bytes, _) => upload(&ctx, &vec![0u8; *bytes as usize])?,
        };
        buffers.push(buf);
    }
    let ranges: Vec<_> = buffers.iter().map(|b| b.range()).collect();
    let device = ctx.device().clone();
    let record = |count: u32| {
        let ranges = &ranges;
        let pipeline = &pipeline;
        let device = &device;
        let push = &a.push;
        let groups = a.groups;
        move |cmd: vk::CommandBuffer| {
            for i in 0..count {
                if i > 0 {
                    // SAFETY: `cmd` is recording on this device.
                    unsafe { compute_barrier(device, cmd) };
                }
                // SAFETY: `cmd` is recording on this device; the buffers live until the
                // submission has been waited for.
                unsafe { pipeline.record(cmd, ranges, push, groups) }?;
            }
            Ok(())
        }
    };
    backend.run_and_wait(record(1)).map_err(|e| e.to_string())?;
    for (b, buf) in a.bindings.iter().zip(&buffers) {
        if let Binding::Out(bytes, path) = b {
            let data = buf.read(0, *bytes as usize).map_err(|e| e.to_string())?;
            std::fs::write(path, data).map_err(|e| format!("{path}: {e}"))?;
        }
    }
    if a.repeat > 0 {
        let t = Instant::now();
        backend
            .run_and_wait(record(a.repeat))
            .map_err(|e| e.to_string())?;
        let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(a.repeat);
        println!("time_us {us:.3}");
    }
    Ok(())
}

fn upload(ctx: &Arc<tessera_vulkan::VulkanContext>, data: &[u8]) -> Result<Buffer, String> {
    let mut buf = Buffer::new(ctx, data.len().max(16) as u64, MemoryLocation::DeviceLocal)
        .map_err(|e| e.to_string())?;
    buf.write(0, data).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--info") {
        match VulkanBackend::new() {
            Ok(b) => print_info(&b),
            Err(e) => {
                eprintln!("spirv_run: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    if let Err(e) = parse(args.into_iter()).and_then(run) {
        eprintln!("spirv_run: {e}");
        std::process::exit(1);
    }
}
