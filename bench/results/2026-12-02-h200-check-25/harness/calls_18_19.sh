# Calls 18 and 19 (pack 2b89ca0, warm machine), as typed into the device tool:
# 18: h_q 128 s_q 1, the plan candidates, TFLOPS
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh; export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64"; for deb in $pack/*.deb; do dpkg -x $deb /; done; ldconfig; export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json TESSERA_CACHE_DIR=/tmp/tc; for ov in coopmat:32,0 coopmat:32,1 cm2; do TESSERA_VULKAN_MLA_DECODE=$ov timeout 60 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "hq128 sq1" --budget-s 25 --json /tmp/v.json >/dev/null 2>&1; python3 -c "
import json; r=json.load(open('/tmp/v.json'))['records']
print('$ov', [(x['shape'].replace(' hq128 sq1',''), round(x['tflops'])) for x in r if x.get('time_ms')])"; done
# output:
# coopmat:32,0 b64 sk4096 bf16 88, b64 sk8192 92, b64 sk32768 95, b128 sk4096 90, b128 sk8192 93, b128 sk6208 92; fp8: 69, 71, 72, 71, 72, 73, skewed 49, sk6208 72
# coopmat:32,1 bf16: 80, 83, 85, 81, 83, 83; fp8: 73, 75, 77, 74, 76, 77, skewed 52, sk6208 75
# cm2          bf16: 18 (first shape of the process), 76, 84, 75, 81, 80
# 19: the MLA bench (mla/), Vulkan rows with the plan of 4fe92cf
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh; export TESSERA_VULKAN_MLA_DECODE=coopmat; BENCH_ONLY=mla_decode BENCH_BUDGET=245 VK_RESERVE=95 VK_BUDGET=95 timeout 290 bash $pack/gpu-bench.sh $OUT/mla > $OUT/mla-bench.log 2>&1
