/* Stub for the macOS build check (see TargetConditionals.h). */
#ifndef ASSERT_STUB
#define ASSERT_STUB
#define static_assert _Static_assert
#define assert(e) ((void)0)
#endif
