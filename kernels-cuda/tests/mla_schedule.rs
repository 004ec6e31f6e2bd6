//! The MLA decode's split-KV schedule, computed on the device from the lengths
//! (`kernels/mla_schedule.cu`): it equals the host rule
//! ([`tessera_core::ops::mla::mla_kv_schedule`], through [`MlaDecodePlan::host_schedule`]) for
//! every candidate tiling, uniform and variable-length queries, skewed lengths with bad ones, and
//! batches beyond the schedule's 512 threads; and a decode step (schedule, decode, combine)
//! captured in a CUDA graph replays with new lengths in device memory, matching the reference
//! each time. Needs a CUDA device (prints `skipped:` otherwise).

mod common;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;
use std::sync::Arc;
use tessera_core::{MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode, MlaDecodeVarlen};
use tessera_cuda::plan::{KernelSpec, MlaDecodeShape, PlannedOp};
use tessera_cuda::{MlaDecodeBuffers, MlaDecodePlan, MlaDecodeVarlenBuffers};
use tessera_reference::{metrics, mla as ref_mla};
use tessera_testing::Rng;

fn upload<T: cudarc::driver::DeviceRepr + Copy>(
    stream: &Arc<CudaStream>,
    host: &[T],
) -> CudaSlice<T> {
    stream.clone_htod(host).unwrap()
}

/// `n` lengths of `0..=capacity`, long-tailed (log-uniform up to `capacity`), with the edge
/// lengths 0, 1, 63, 64, 65 and the full capacity among them, and (with `bad`) lengths outside
/// the table (-3, capacity + 5), whose requests read no keys and output NaN.
fn skewed_lens(rng: &mut Rng, n: usize, capacity: usize, bad: bool) -> Vec<i32> {
    let edges = [0, 1, 63, 64, 65, capacity as i32];
    (0..n)
        .map(|b| {
            if b < edges.len() {
                return edges[(b * 5 + 2) % edges.len()];
            }
            if bad && b % 29 == 11 {
                return if b % 2 == 0 { -3 } else { capacity as i32 + 5 };
            }
            let t = rng.uniform_f32(0.0, (capacity as f32).ln());
            (t.exp() as i32).min(capacity as i32)
        })
        .collect()
}

/// A random cache of `num_pages` pages (records of finite bf16 / e4m3 values) and a random
/// block table of `batch x max_pages` pages: enough for the schedule (outputs not checked).
fn random_cache(rng: &mut Rng, layout: MlaCacheLayout, num_pages: usize) -> MlaCache {
    let mut cache = MlaCache::new(layout, num_pages).unwrap();
    for slot in 0..cache.num_slots() {
        layout
            .write_record(
                cache.token_record_mut(slot),
                rng,
                |r| r.uniform_f32(-1.0, 1.0),
                Rng::moderate_e4m3,
                1.0 / 64.0,
            )
            .unwrap();
    }
    cache
}

#[test]
fn the_device_schedule_is_the_host_rule() {
    let Some(be) = common::backend() else { return };
    let stream = be.stream().clone();
    let mut rng = Rng::new(71);
    let layouts = [
        MlaCacheLayout::default(),
        MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        },
        MlaCacheLayout {
            page_size: 16,
            latent_dim: 256,
            rope_dim: 32,
            format: MlaCacheFormat::Bf16,
        },
    ];
    // (batch, s_q, heads): one request; odd rows; DeepSeek-V3 on one GPU; more requests than
    // the schedule has threads (its scans and sort run in chunks).
    let shapes = [(1, 1, 16), (9, 2, 5), (128, 1, 128), (600, 1, 16)];
    // Under the sanitizer, a smaller test that still takes the same schedule paths (splits,
    // chunked scans past 512 requests, bad lengths): requests of at most 256 keys (4 tiles: up
    // to 2 splits), each shape's first candidate, and no set of full-length requests. With every
    // candidate, racecheck's host process grew steadily to 120 GB and was killed even at 256 keys
    // (H200, session 9); at 1024 keys it ran past 200 s. plan_candidates racechecks every
    // candidate's kernel, and the schedule kernel is the same for all of them.
    let small = common::under_sanitizer();
    let capacity = if small { 256 } else { 6400 };
    let candidates_per_shape = if small { 1 } else { usize::MAX };
    let mut checked = 0;
    for layout in layouts {
        let max_pages = capacity / layout.page_size;
        let num_pages = 16;
        let cache = upload(
            &stream,
            random_cache(&mut rng, layout, num_pages).as_bytes(),
        );
        for (batch, s_q, heads) in shapes {
            let op = MlaDecode {
                batch,
                s_q,
                heads,
                max_pages,
                softmax_scale: 0.1,
                layout,
            };
            let table: Vec<i32> = (0..batch * max_pages)
                .map(|_| rng.below(num_pages) as i32)
                .collect();
            let table = upload(&stream, &table);
            let q = upload(&stream, &common::bf16s(batch as u64, op.q_len()));
            let mut o = stream.alloc_zeros::<bf16>(op.o_len()).unwrap();
            let mut lse = stream.alloc_zeros::<f32>(op.lse_len()).unwrap();
            let shape = MlaDecodeShape {
                op: &op,
                max_seq_len: capacity,
            };
            let mut lens_sets = vec![skewed_lens(&mut rng, batch, capacity, true), vec![0; batch]];
            if !small {
                lens_sets.push(vec![3000; batch]);
            }
            // Varlen: up to 3 queries per request, some none.
            let counts: Vec<usize> = (0..batch).map(|b| (b * 7 + 1) % 4).collect();
            let mut cu = vec![0i32];
            for &n in &counts {
                cu.push(cu[cu.len() - 1] + n as i32);
            }
            let varlen = MlaDecodeVarlen {
                batch,
                total_q: cu[batch] as usize,
                max_s_q: 3,
                heads,
                max_pages,
                softmax_scale: 0.1,
                layout,
            };
            let vq = upload(&stream, &common::bf16s(7, varlen.q_len().max(1)));
            let d_cu = upload(&stream, &cu);
            let mut vo = stream.alloc_zeros::<bf16>(varlen.o_len().max(1)).unwrap();
            let mut vlse = stream.alloc_zeros::<f32>(varlen.lse_len().max(1)).unwrap();
            let padded = varlen.padded();
            let vshape = MlaDecodeShape {
                op: &padded,
                max_seq_len: capacity,
            };
            for c in shape
                .candidates(be.arch_spec())
                .unwrap()
                .into_iter()
                .take(candidates_per_shape)
            {
                let plan = be.mla_decode_plan_with(&op, capacity, c).unwrap();
                assert!(plan.max_units() > batch, "{}: no schedule", c.label());
                let mut ws = stream.alloc_zeros::<f32>(plan.workspace_len()).unwrap();
                for lens in &lens_sets {
                    let d_lens = upload(&stream, lens);
                    let mut bufs = MlaDecodeBuffers {
                        cache: cache.as_view(),
                        q: q.as_view(),
                        block_table: table.as_view(),
                        seq_lens: d_lens.as_view(),
                        o: o.as_view_mut(),
                        lse: lse.as_view_mut(),
                        workspace: ws.as_view_mut(),
                    };
                    be.mla_decode_on(&stream, &op, &plan, &mut bufs).unwrap();
                    let got = plan
                        .read_schedule(&stream.clone_dtoh(&ws).unwrap())
                        .unwrap();
                    let want = plan.host_schedule(lens, None);
                    assert!(
                        got == want,
                        "{:?} b {batch} s_q {s_q} h {heads} {}: device {got:?}\nhost {want:?}",
                        layout.format,
                        c.label()
                    );
                    checked += 1;
                }
            }
            for c in vshape
                .candidates(be.arch_spec())
                .unwrap()
                .into_iter()
                .take(candidates_per_shape)
            {
                let plan = be
                    .mla_decode_varlen_plan_with(&varlen, capacity, c)
                    .unwrap();
                let mut ws = stream.alloc_zeros::<f32>(plan.workspace_len()).unwrap();
                let lens = &lens_sets[0];
                let d_lens = upload(&stream, lens);
                let mut bufs = MlaDecodeVarlenBuffers {
                    cache: cache.as_view(),
                    q: vq.slice(0..varlen.q_len()),
                    cu_seqlens_q: d_cu.as_view(),
                    block_table: table.as_view(),
                    seq_lens: d_lens.as_view(),
                    o: vo.slice_mut(0..varlen.o_len()),
                    lse: vlse.slice_mut(0..varlen.lse_len()),
                    workspace: ws.as_view_mut(),
                };
                be.mla_decode_varlen_on(&stream, &varlen, &plan, &mut bufs)
                    .unwrap();
                let got = plan
                    .read_schedule(&stream.clone_dtoh(&ws).unwrap())
                    .unwrap();
                let want = plan.host_schedule(lens, Some(&counts));
                assert!(
                    got == want,
                    "varlen {:?} b {batch} h {heads} {}: device {got:?}\nhost {want:?}",
                    layout.format,
                    c.label()
                );
                checked += 1;
            }
        }
    }
    println!("{checked} device schedules equal the host rule");
}

/// One request set of the captured step: its lengths and what the reference computes for them.
struct Step {
    lens: Vec<i32>,
    want_o: Vec<f64>,
    want_lse: Vec<f64>,
}

/// Checks a replay's outputs against the reference: every element written (the outputs start
/// as NaN), o within 1e-2 relative L2, lse within 2e-3 (-inf where the reference's is).
fn check_outputs(what: &str, o: &[bf16], lse: &[f32], step: &Step) {
    let got_o: Vec<f64> = o.iter().map(|x| x.to_f64()).collect();
    let got_lse: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
    assert!(got_o.iter().all(|x| x.is_finite()), "{what}: o not written");
    assert!(
        got_lse
            .iter()
            .zip(&step.want_lse)
            .all(|(g, w)| !g.is_nan() && g.is_finite() == w.is_finite()),
        "{what}: lse not written or -inf mismatch"
    );
    let rel = metrics::relative_l2_error(&got_o, &step.want_o);
    let lse_err = metrics::lse_max_error(&got_lse, &step.want_lse);
    println!("{what}: rel {rel:.2e} lse {lse_err:.2e}");
    assert!(
        rel <= 1e-2 && lse_err <= 2e-3,
        "{what}: rel {rel} lse {lse_err}"
    );
}

/// A cache holding every request's keys for the longest of `lens_sets`, a table of distinct
/// shuffled pages, values from `rng`.
fn step_cache(
    rng: &mut Rng,
    layout: MlaCacheLayout,
    lens_sets: &[&[i32]],
) -> (MlaCache, Vec<i32>, usize) {
    let batch = lens_sets[0].len();
    let longest: Vec<usize> = (0..batch)
        .map(|b| lens_sets.iter().map(|l| l[b] as usize).max().unwrap())
        .collect();
    let pages_of = |n: usize| n.div_ceil(layout.page_size);
    let max_pages = longest.iter().map(|&n| pages_of(n)).max().unwrap().max(1);
    let num_pages: usize = longest.iter().map(|&n| pages_of(n)).sum::<usize>() + 1;
    let mut perm: Vec<i32> = (0..num_pages as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    let mut table = vec![-1i32; batch * max_pages];
    let mut next = 0;
    for (b, &len) in longest.iter().enumerate() {
        for p in 0..pages_of(len) {
            table[b * max_pages + p] = perm[next];
            next += 1;
        }
    }
    (random_cache(rng, layout, num_pages), table, max_pages)
}

#[test]
fn a_captured_decode_step_replays_with_new_lengths() {
    let Some(be) = common::backend() else { return };
    let ctx = be.context().clone();
    // SAFETY: every buffer below lives on `stream` only and its uses are ordered by it (the
    // host copies synchronize): no cross-stream tracking is needed, and a tracked buffer's
    // event wait would not be capturable.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let mut rng = Rng::new(97);
    let layout = MlaCacheLayout::default();
    // Lengths that differ a lot between the replays: empty, 1, 63, 65, long ones.
    let lens_a: Vec<i32> = vec![0, 1, 63, 65, 5000, 64, 700, 5];
    let lens_b: Vec<i32> = vec![4000, 65, 0, 1, 63, 2, 300, 5100];
    let (cache, table, max_pages) = step_cache(&mut rng, layout, &[&lens_a, &lens_b]);
    let capacity = max_pages * layout.page_size;

    // The uniform decode: 2 queries of 32 heads per request.
    let op = MlaDecode {
        batch: lens_a.len(),
        s_q: 2,
        heads: 32,
        max_pages,
        softmax_scale: 192f32.powf(-0.5),
        layout,
    };
    let q = common::bf16s(5, op.q_len());
    let q64: Vec<f64> = q.iter().map(|x| x.to_f64()).collect();
    let plan = be.mla_decode_plan(&op, capacity).unwrap();
    assert!(
        plan.max_units() > op.batch,
        "the plan must run the schedule"
    );
    let steps: Vec<Step> = [&lens_a, &lens_b]
        .iter()
        .map(|lens| {
            let want = ref_mla::mla_decode(&op, &cache, &q64, &table, lens);
            Step {
                lens: lens.to_vec(),
                want_o: want.o,
                want_lse: want.lse,
            }
        })
        .collect();
    let d_cache = upload(&stream, cache.as_bytes());
    let d_q = upload(&stream, &q);
    let d_table = upload(&stream, &table);
    let mut d_lens = upload(&stream, &lens_a);
    let mut d_o = stream.alloc_zeros::<bf16>(op.o_len()).unwrap();
    let mut d_lse = stream.alloc_zeros::<f32>(op.lse_len()).unwrap();
    let mut d_ws = stream.alloc_zeros::<f32>(plan.workspace_len()).unwrap();
    let launch = |d_lens: &CudaSlice<i32>,
                  d_o: &mut CudaSlice<bf16>,
                  d_lse: &mut CudaSlice<f32>,
                  d_ws: &mut CudaSlice<f32>| {
        let mut bufs = MlaDecodeBuffers {
            cache: d_cache.as_view(),
            q: d_q.as_view(),
            block_table: d_table.as_view(),
            seq_lens: d_lens.as_view(),
            o: d_o.as_view_mut(),
            lse: d_lse.as_view_mut(),
            workspace: d_ws.as_view_mut(),
        };
        be.mla_decode_on(&stream, &op, &plan, &mut bufs).unwrap();
    };
    // Once outside the capture: the kernels compile and load.
    launch(&d_lens, &mut d_o, &mut d_lse, &mut d_ws);
    stream.synchronize().unwrap();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    launch(&d_lens, &mut d_o, &mut d_lse, &mut d_ws);
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture made a graph");
    let mut schedules = Vec::new();
    for (i, step) in [&steps[0], &steps[1], &steps[0]].into_iter().enumerate() {
        stream.memcpy_htod(&step.lens, &mut d_lens).unwrap();
        stream
            .memcpy_htod(&vec![bf16::NAN; op.o_len()], &mut d_o)
            .unwrap();
        stream
            .memcpy_htod(&vec![f32::NAN; op.lse_len()], &mut d_lse)
            .unwrap();
        graph.launch().unwrap();
        stream.synchronize().unwrap();
        let o = stream.clone_dtoh(&d_o).unwrap();
        let lse = stream.clone_dtoh(&d_lse).unwrap();
        check_outputs(
            &format!("uniform replay {i} lens {:?}", step.lens),
            &o,
            &lse,
            step,
        );
        let sch = plan
            .read_schedule(&stream.clone_dtoh(&d_ws).unwrap())
            .unwrap();
        assert_eq!(sch, plan.host_schedule(&step.lens, None));
        schedules.push(sch);
    }
    assert_ne!(
        schedules[0], schedules[1],
        "the replays must have scheduled anew"
    );
    assert_eq!(schedules[0], schedules[2]);
    drop(graph);

    // The variable-length decode: new lengths and new query offsets in the replay.
    let varlen = MlaDecodeVarlen {
        batch: lens_a.len(),
        total_q: 14,
        max_s_q: 3,
        heads: 16,
        max_pages,
        softmax_scale: 192f32.powf(-0.5),
        layout,
    };
    let counts_a = [3usize, 2, 1, 0, 3, 2, 1, 2];
    let counts_b = [1usize, 3, 3, 2, 0, 1, 3, 1];
    let cu_of = |counts: &[usize]| {
        let mut cu = vec![0i32];
        for &n in counts {
            cu.push(cu[cu.len() - 1] + n as i32);
        }
        cu
    };
    let (cu_a, cu_b) = (cu_of(&counts_a), cu_of(&counts_b));
    assert_eq!((cu_a[8], cu_b[8]), (14, 14));
    let vq = common::bf16s(6, varlen.q_len());
    let vq64: Vec<f64> = vq.iter().map(|x| x.to_f64()).collect();
    let vplan: MlaDecodePlan = be.mla_decode_varlen_plan(&varlen, capacity).unwrap();
    assert!(vplan.max_units() > varlen.batch);
    let vsteps: Vec<(Vec<i32>, &[usize], Step)> =
        [(&lens_a, &cu_a, &counts_a), (&lens_b, &cu_b, &counts_b)]
            .into_iter()
            .map(|(lens, cu, counts)| {
                let want = ref_mla::mla_decode_varlen(&varlen, &cache, &vq64, cu, &table, lens);
                (
                    cu.clone(),
                    &counts[..],
                    Step {
                        lens: lens.to_vec(),
                        want_o: want.o,
                        want_lse: want.lse,
                    },
                )
            })
            .collect();
    let d_vq = upload(&stream, &vq);
    let mut d_cu = upload(&stream, &cu_a);
    let mut d_vo = stream.alloc_zeros::<bf16>(varlen.o_len()).unwrap();
    let mut d_vlse = stream.alloc_zeros::<f32>(varlen.lse_len()).unwrap();
    let mut d_vws = stream.alloc_zeros::<f32>(vplan.workspace_len()).unwrap();
    let vlaunch = |d_lens: &CudaSlice<i32>,
                   d_cu: &CudaSlice<i32>,
                   d_o: &mut CudaSlice<bf16>,
                   d_lse: &mut CudaSlice<f32>,
                   d_ws: &mut CudaSlice<f32>| {
        let mut bufs = MlaDecodeVarlenBuffers {
            cache: d_cache.as_view(),
            q: d_vq.as_view(),
            cu_seqlens_q: d_cu.as_view(),
            block_table: d_table.as_view(),
            seq_lens: d_lens.as_view(),
            o: d_o.as_view_mut(),
            lse: d_lse.as_view_mut(),
            workspace: d_ws.as_view_mut(),
        };
        be.mla_decode_varlen_on(&stream, &varlen, &vplan, &mut bufs)
            .unwrap();
    };
    vlaunch(&d_lens, &d_cu, &mut d_vo, &mut d_vlse, &mut d_vws);
    stream.synchronize().unwrap();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    vlaunch(&d_lens, &d_cu, &mut d_vo, &mut d_vlse, &mut d_vws);
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture made a graph");
    for (i, (cu, counts, step)) in vsteps.iter().chain(vsteps.iter().take(1)).enumerate() {
        stream.memcpy_htod(&step.lens, &mut d_lens).unwrap();
        stream.memcpy_htod(cu, &mut d_cu).unwrap();
        stream
            .memcpy_htod(&vec![bf16::NAN; varlen.o_len()], &mut d_vo)
            .unwrap();
        stream
            .memcpy_htod(&vec![f32::NAN; varlen.lse_len()], &mut d_vlse)
            .unwrap();
        graph.launch().unwrap();
        stream.synchronize().unwrap();
        let o = stream.clone_dtoh(&d_vo).unwrap();
        let lse = stream.clone_dtoh(&d_vlse).unwrap();
        check_outputs(
            &format!("varlen replay {i} lens {:?} counts {counts:?}", step.lens),
            &o,
            &lse,
            step,
        );
        let sch = vplan
            .read_schedule(&stream.clone_dtoh(&d_vws).unwrap())
            .unwrap();
        assert_eq!(sch, vplan.host_schedule(&step.lens, Some(&counts[..])));
    }
    drop(graph);
}
