{
  # The one build of the addon. Sources are listed once, here.
  # Per-level SIMD sources (ours and BLAKE3's) are compiled in their own static
  # libraries with the flags they need (x86-64 only); nothing else gets those flags,
  # and the library picks a level at run time (native/src/cpu.cc, blake3_dispatch.c).
  # Never -march=native: a shipped binary runs on any x86-64 / arm64.
  # The conditions read target_arch (node-gyp --arch), so a cross build for arm64
  # (scripts/prebuild.sh) takes the arm64 branches on an x86-64 host.
  "target_defaults": {
    "cflags": ["-O3", "-fno-strict-aliasing", "-ffp-contract=off"],
    "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off"],
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++14", "-std=gnu++17"],
    "xcode_settings": {
      "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
      "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
      "MACOSX_DEPLOYMENT_TARGET": "11.0",
      "OTHER_CFLAGS": ["-O3", "-ffp-contract=off"],
    },
    "msvs_settings": {
      "VCCLCompilerTool": {"ExceptionHandling": 1, "AdditionalOptions": ["/std:c++17", "/fp:precise"]},
    },
  },
  "targets": [
    {
      "target_name": "ghost_tensor",
      "sources": [
        "native/src/addon.cc",
        "native/src/attention.cc",
        "native/src/attention_binding.cc",
        "native/src/blake3_batch.c",
        "native/src/canonical.cc",
        "native/src/canonical_binding.cc",
        "native/src/cpu.cc",
        "native/src/dense_hopfield.cc",
        "native/src/errors.cc",
        "native/src/file_binding.cc",
        "native/src/hnsw_index.cc",
        "native/src/hopfield_binding.cc",
        "native/src/optimizer.cc",
        "native/src/kernels.cc",
        "native/src/kernels_scalar.cc",
        "native/src/kernels_neon.cc",
        "native/src/merkle.cc",
        "native/src/metric.cc",
        "native/src/napi_util.cc",
        "native/src/parallel.cc",
        "native/src/product_keys.cc",
        "native/src/search.cc",
        "native/src/sparse_hopfield.cc",
        "native/src/sparse_tensor.cc",
        "native/src/tensor_binding.cc",
        "native/src/tensor_file.cc",
        "native/src/train_binding.cc",
        "native/third_party/blake3/blake3.c",
        "native/third_party/blake3/blake3_dispatch.c",
        "native/third_party/blake3/blake3_portable.c",
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "conditions": [
        ["target_arch=='x64'", {
          "dependencies": ["gt_x64_avx2", "gt_x64_avx512", "gt_x64_sse"],
        }, {
          # Not x86-64: these files compile to null tables; BLAKE3 uses portable C (or NEON).
          "sources": ["native/src/kernels_avx2.cc", "native/src/kernels_avx512.cc"],
          "defines": ["BLAKE3_NO_SSE2", "BLAKE3_NO_SSE41", "BLAKE3_NO_AVX2", "BLAKE3_NO_AVX512"],
        }],
        ["target_arch=='arm64'", {
          "sources": ["native/third_party/blake3/blake3_neon.c"],
          "defines": ["BLAKE3_USE_NEON=1"],
        }],
        ["OS=='linux'", {"libraries": ["-lpthread"]}],
      ],
    },
  ],
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "gt_x64_sse",
          "type": "static_library",
          "sources": ["native/third_party/blake3/blake3_sse2.c", "native/third_party/blake3/blake3_sse41.c"],
          "cflags": ["-msse4.1"],
          "xcode_settings": {"OTHER_CFLAGS": ["-msse4.1"]},
        },
        {
          "target_name": "gt_x64_avx2",
          "type": "static_library",
          "sources": ["native/src/kernels_avx2.cc", "native/third_party/blake3/blake3_avx2.c"],
          "cflags": ["-mavx2", "-mfma"],
          "cflags_cc": ["-mavx2", "-mfma"],
          "xcode_settings": {"OTHER_CFLAGS": ["-mavx2", "-mfma"], "OTHER_CPLUSPLUSFLAGS": ["-mavx2", "-mfma"]},
          "msvs_settings": {"VCCLCompilerTool": {"EnableEnhancedInstructionSet": "5"}},
        },
        {
          "target_name": "gt_x64_avx512",
          "type": "static_library",
          "sources": ["native/src/kernels_avx512.cc", "native/third_party/blake3/blake3_avx512.c"],
          "cflags": ["-mavx512f", "-mavx512vl", "-mavx2", "-mfma"],
          "cflags_cc": ["-mavx512f", "-mavx512vl", "-mavx2", "-mfma"],
          "xcode_settings": {
            "OTHER_CFLAGS": ["-mavx512f", "-mavx512vl", "-mavx2", "-mfma"],
            "OTHER_CPLUSPLUSFLAGS": ["-mavx512f", "-mavx512vl", "-mavx2", "-mfma"],
          },
          "msvs_settings": {"VCCLCompilerTool": {"AdditionalOptions": ["/arch:AVX512"]}},
        },
      ],
    }],
  ],
}
