{
  # The one build of the addon. The sources are listed once, in native/sources.json
  # (read here through native/sources.cjs; the sanitizer script reads the same list).
  # Per-level SIMD sources (ours and BLAKE3's) are compiled in their own static
  # libraries with the flags they need (x86-64 only); nothing else gets those flags,
  # and the library picks a level at run time (native/src/core/cpu.cc, blake3_dispatch.c).
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
        "<!@(node native/sources.cjs core)",
        "<!@(node native/sources.cjs napi)",
        "<!@(node native/sources.cjs blake3)",
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "conditions": [
        ["target_arch=='x64'", {
          "dependencies": ["gt_x64_sse2", "gt_x64_sse41", "gt_x64_avx2", "gt_x64_avx512"],
        }, {
          # Not x86-64: these files compile to null tables; BLAKE3 uses portable C (or NEON).
          "sources": ["<!@(node native/sources.cjs x64-portable)"],
          "defines": ["BLAKE3_NO_SSE2", "BLAKE3_NO_SSE41", "BLAKE3_NO_AVX2", "BLAKE3_NO_AVX512"],
        }],
        ["target_arch=='arm64'", {
          "sources": ["<!@(node native/sources.cjs arm64.sources)"],
          "defines": ["<!@(node native/sources.cjs arm64.defines)"],
        }],
        ["OS=='linux'", {"libraries": ["-lpthread"]}],
      ],
    },
  ],
  "conditions": [
    ["target_arch=='x64'", {
      "targets": [
        {
          "target_name": "gt_x64_sse2",
          "type": "static_library",
          "sources": ["<!@(node native/sources.cjs x64.sse2.sources)"],
          "cflags": ["<!@(node native/sources.cjs x64.sse2.flags)"],
          "cflags_cc": ["<!@(node native/sources.cjs x64.sse2.flags)"],
          "xcode_settings": {
            "OTHER_CFLAGS": ["<!@(node native/sources.cjs x64.sse2.flags)"],
            "OTHER_CPLUSPLUSFLAGS": ["<!@(node native/sources.cjs x64.sse2.flags)"],
          },
        },
        {
          "target_name": "gt_x64_sse41",
          "type": "static_library",
          "sources": ["<!@(node native/sources.cjs x64.sse41.sources)"],
          "cflags": ["<!@(node native/sources.cjs x64.sse41.flags)"],
          "cflags_cc": ["<!@(node native/sources.cjs x64.sse41.flags)"],
          "xcode_settings": {
            "OTHER_CFLAGS": ["<!@(node native/sources.cjs x64.sse41.flags)"],
            "OTHER_CPLUSPLUSFLAGS": ["<!@(node native/sources.cjs x64.sse41.flags)"],
          },
        },
        {
          "target_name": "gt_x64_avx2",
          "type": "static_library",
          "sources": ["<!@(node native/sources.cjs x64.avx2.sources)"],
          "cflags": ["<!@(node native/sources.cjs x64.avx2.flags)"],
          "cflags_cc": ["<!@(node native/sources.cjs x64.avx2.flags)"],
          "xcode_settings": {
            "OTHER_CFLAGS": ["<!@(node native/sources.cjs x64.avx2.flags)"],
            "OTHER_CPLUSPLUSFLAGS": ["<!@(node native/sources.cjs x64.avx2.flags)"],
          },
          "msvs_settings": {"VCCLCompilerTool": {"EnableEnhancedInstructionSet": "5"}},
        },
        {
          "target_name": "gt_x64_avx512",
          "type": "static_library",
          "sources": ["<!@(node native/sources.cjs x64.avx512.sources)"],
          "cflags": ["<!@(node native/sources.cjs x64.avx512.flags)"],
          "cflags_cc": ["<!@(node native/sources.cjs x64.avx512.flags)"],
          "xcode_settings": {
            "OTHER_CFLAGS": ["<!@(node native/sources.cjs x64.avx512.flags)"],
            "OTHER_CPLUSPLUSFLAGS": ["<!@(node native/sources.cjs x64.avx512.flags)"],
          },
          "msvs_settings": {"VCCLCompilerTool": {"AdditionalOptions": ["/arch:AVX512"]}},
        },
      ],
    }],
  ],
}
