/* What Apple's SDK header says for macOS on arm64; only for the macOS build
   check in .ci/run, which compiles C dependencies (ring) without an SDK and
   links nothing. */
#ifndef TARGET_CONDITIONALS_STUB
#define TARGET_CONDITIONALS_STUB
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
#define TARGET_OS_IOS 0
#define TARGET_OS_WATCH 0
#define TARGET_OS_TV 0
#define TARGET_OS_SIMULATOR 0
#define TARGET_OS_EMBEDDED 0
#define TARGET_CPU_ARM64 1
#define TARGET_CPU_X86_64 0
#define TARGET_RT_64_BIT 1
#endif
