// simt_runtime.cpp - the execution engine of the cusoft SIMT harness: fibers, the block barrier,
// the warp exchange, the block loop and the launch server that Python talks to.
//
// Scheduling.  Every thread of the running block is a fiber.  A fiber runs until it blocks on a
// synchronisation call (or ends), then hands the CPU straight to the next fiber of the current
// round.  When the round is empty every live fiber is blocked; the resolver then releases each
// complete group (the whole block at __syncthreads, all lanes named in a warp intrinsic's mask,
// a warp that has not started) or a seeded choice of them (see Schedule), and the released
// fibers form the next round, in an order shuffled from the launch seed.  If no group can be
// released the launch is deadlocked, which is reported with each thread's position.
#include "simt.h"
#include "simt_driver.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#if defined(CUSOFT_SIMT_ASAN)
// set by the build: the kernels are instrumented even though this file is not
#elif defined(__SANITIZE_ADDRESS__)
#define CUSOFT_SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUSOFT_SIMT_ASAN 1
#endif
#endif
#ifdef CUSOFT_SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(CUSOFT_SIMT_UCONTEXT) || !defined(__ELF__) || !(defined(__x86_64__) || defined(__aarch64__))
#undef CUSOFT_SIMT_UCONTEXT
#define CUSOFT_SIMT_UCONTEXT 1
#include <ucontext.h>
#endif

namespace cusoft_simt {
namespace detail {

const uint3* g_thread_idx = nullptr;
uint3 g_block_idx = {0, 0, 0};
dim3 g_block_dim;
dim3 g_grid_dim;

static const uint3 k_no_thread = {0, 0, 0};
static unsigned char* g_dyn_smem = nullptr;
static const char* g_kernel_name = "?";

// ---- context switch ----------------------------------------------------------------------------
// A fiber switch saves the callee-saved registers on the old stack and swaps stack pointers.
// (ucontext's swapcontext makes two system calls per switch for the signal mask; a launch makes
// hundreds of thousands of switches.)
extern "C" void cusoft_simt_switch(void** save_sp, void* new_sp);
#if defined(CUSOFT_SIMT_UCONTEXT)
// portable fallback: swapcontext
#elif defined(__x86_64__)
asm(R"(
    .text
    .globl cusoft_simt_switch
    .type cusoft_simt_switch, @function
cusoft_simt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cusoft_simt_switch, .-cusoft_simt_switch
)");
#elif defined(__aarch64__)
asm(R"(
    .text
    .globl cusoft_simt_switch
    .type cusoft_simt_switch, %function
cusoft_simt_switch:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #176
    ret
    .size cusoft_simt_switch, .-cusoft_simt_switch
)");
#endif

enum State { WAIT_START, READY, WAIT_BLOCK, WAIT_WARP, DONE };

struct Fiber {
    void* sp = nullptr;
    char* stack_lo = nullptr;  // usable stack, above the guard page
    size_t stack_size = 0;
#ifdef CUSOFT_SIMT_UCONTEXT
    ucontext_t ctx;
#endif
    uint3 tid = {0, 0, 0};
    unsigned linear = 0, warp = 0, lane = 0;
    State state = DONE;
    // the synchronisation call it waits in
    int op = 0;
    unsigned mask = 0;
    unsigned long long value = 0, result = 0;
    int arg = 0, width = 32, pred = 0;
    const char* file = "";
    int line = 0;
};

static std::vector<Fiber> g_fibers;
static unsigned g_nthreads = 0;
static Fiber* g_cur = nullptr;
static void* g_main_sp = nullptr;
static std::vector<unsigned> g_round;
static size_t g_round_pos = 0;
static FiberBody g_body = nullptr;
static void* g_body_ctx = nullptr;
static size_t g_stack_bytes = 256 * 1024;
#ifdef CUSOFT_SIMT_UCONTEXT
static ucontext_t g_main_ctx;
#endif
#ifdef CUSOFT_SIMT_ASAN
static const void* g_main_stack_bottom = nullptr;
static size_t g_main_stack_size = 0;
#endif

// ---- seeded shuffles ---------------------------------------------------------------------------
struct Rng {
    unsigned long long s;
    unsigned long long next() {  // splitmix64
        unsigned long long z = (s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    unsigned below(unsigned n) { return static_cast<unsigned>(next() % n); }
};
static Rng g_rng = {0};

// ---- errors ------------------------------------------------------------------------------------
static void describe_position(char* buf, size_t n) {
    if (g_cur) {
        snprintf(buf, n, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", g_kernel_name, g_block_idx.x,
                 g_block_idx.y, g_block_idx.z, g_cur->tid.x, g_cur->tid.y, g_cur->tid.z);
    } else {
        snprintf(buf, n, "kernel %s, block (%u,%u,%u)", g_kernel_name, g_block_idx.x, g_block_idx.y,
                 g_block_idx.z);
    }
}

void fail(const char* fmt, ...) {
    fflush(stdout);
    char pos[256];
    describe_position(pos, sizeof pos);
    fprintf(stderr, "SIMT ERROR (%s): ", pos);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    _exit(86);
}

static const char* op_name(int op) {
    switch (op) {
        case OP_SYNCTHREADS: return "__syncthreads";
        case OP_SYNCTHREADS_COUNT: return "__syncthreads_count";
        case OP_SYNCTHREADS_AND: return "__syncthreads_and";
        case OP_SYNCTHREADS_OR: return "__syncthreads_or";
        case OP_SYNCWARP: return "__syncwarp";
        case OP_SHFL_IDX: return "__shfl_sync";
        case OP_SHFL_UP: return "__shfl_up_sync";
        case OP_SHFL_DOWN: return "__shfl_down_sync";
        case OP_SHFL_XOR: return "__shfl_xor_sync";
        case OP_BALLOT: return "__ballot_sync";
        case OP_ANY: return "__any_sync";
        case OP_ALL: return "__all_sync";
        case OP_MATCH_ANY: return "__match_any_sync";
    }
    return "?";
}

static void fail_deadlock() {
    fflush(stdout);
    fprintf(stderr,
            "SIMT ERROR (kernel %s, block (%u,%u,%u)): deadlock: no thread can proceed.  Where the "
            "threads wait:\n",
            g_kernel_name, g_block_idx.x, g_block_idx.y, g_block_idx.z);
    // Runs of consecutive threads waiting at the same call print as one line.
    unsigned done = 0, lines = 0;
    for (unsigned i = 0; i < g_nthreads;) {
        const Fiber& f = g_fibers[i];
        if (f.state == DONE) {
            ++done;
            ++i;
            continue;
        }
        unsigned j = i + 1;
        while (j < g_nthreads && g_fibers[j].state == f.state && g_fibers[j].op == f.op &&
               g_fibers[j].mask == f.mask && g_fibers[j].line == f.line && strcmp(g_fibers[j].file, f.file) == 0)
            ++j;
        const Fiber& l = g_fibers[j - 1];
        if (lines++ < 32) {
            char mask[32] = "";
            if (f.state == WAIT_WARP) snprintf(mask, sizeof mask, "(mask=0x%08x)", f.mask);
            fprintf(stderr, "  threads (%u,%u,%u)..(%u,%u,%u) [linear %u-%u]: %s%s at %s:%d\n", f.tid.x, f.tid.y,
                    f.tid.z, l.tid.x, l.tid.y, l.tid.z, i, j - 1, op_name(f.op), mask, f.file, f.line);
        }
        i = j;
    }
    if (lines > 32) fprintf(stderr, "  ... %u more groups\n", lines - 32);
    fprintf(stderr, "  (%u threads of the block have exited)\n", done);
    fflush(stderr);
    _exit(86);
}

// ---- fiber plumbing ----------------------------------------------------------------------------
static void fiber_main();

static void ensure_fibers(unsigned n) {
    if (g_fibers.size() >= n) return;
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    size_t old = g_fibers.size();
    g_fibers.resize(n);
    for (size_t i = old; i < n; ++i) {
        size_t guard = 16 * page;
        size_t total = g_stack_bytes + guard;
        void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (mem == MAP_FAILED) fail("cannot map a %zu-byte fiber stack: %s", total, strerror(errno));
        mprotect(mem, guard, PROT_NONE);  // a stack overflow faults instead of corrupting
        g_fibers[i].stack_lo = static_cast<char*>(mem) + guard;
        g_fibers[i].stack_size = g_stack_bytes;
    }
}

static void prepare_fiber(Fiber& f) {
#ifdef CUSOFT_SIMT_ASAN
    // Returning frames clean up their redzones; only the never-returning frames at the top
    // (fiber_main and the switch into the next fiber) leave poison behind.
    size_t dirty = f.stack_size < 8 * 1024 ? f.stack_size : 8 * 1024;
    __asan_unpoison_memory_region(f.stack_lo + f.stack_size - dirty, dirty);
#endif
#ifdef CUSOFT_SIMT_UCONTEXT
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack_lo;
    f.ctx.uc_stack.ss_size = f.stack_size;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#else
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack_lo) + f.stack_size) & ~static_cast<uintptr_t>(15);
    void** sp = reinterpret_cast<void**>(top);
#if defined(__x86_64__)
    *--sp = nullptr;                                   // fake return address of fiber_main
    *--sp = reinterpret_cast<void*>(&fiber_main);      // where cusoft_simt_switch returns to
    for (int i = 0; i < 6; ++i) *--sp = nullptr;       // rbp rbx r12..r15
    unsigned int csr[2];
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(csr[1]));
    --sp;
    memcpy(sp, csr, 8);
#elif defined(__aarch64__)
    sp -= 22;  // 176-byte frame
    memset(sp, 0, 176);
    sp[11] = reinterpret_cast<void*>(&fiber_main);     // x30 (link register)
#endif
    f.sp = sp;
#endif
}

static void switch_to(Fiber* from, Fiber* to, bool from_exits) {
#ifdef CUSOFT_SIMT_ASAN
    void* fake = nullptr;
    const void* bottom = to ? static_cast<const void*>(to->stack_lo) : g_main_stack_bottom;
    size_t size = to ? to->stack_size : g_main_stack_size;
    __sanitizer_start_switch_fiber(from_exits ? nullptr : &fake, bottom, size);
#else
    (void)from_exits;
#endif
    g_cur = to;
    g_thread_idx = to ? &to->tid : &k_no_thread;
#ifdef CUSOFT_SIMT_UCONTEXT
    swapcontext(from ? &from->ctx : &g_main_ctx, to ? &to->ctx : &g_main_ctx);
#else
    cusoft_simt_switch(from ? &from->sp : &g_main_sp, to ? to->sp : g_main_sp);
#endif
#ifdef CUSOFT_SIMT_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

static void resolve();

// The next fiber to run, or nullptr when every thread of the block has finished.
static Fiber* pick_next() {
    for (;;) {
        while (g_round_pos < g_round.size()) {
            Fiber* f = &g_fibers[g_round[g_round_pos++]];
            if (f->state == READY) return f;
        }
        resolve();
        g_round.clear();
        g_round_pos = 0;
        bool all_done = true;
        for (unsigned i = 0; i < g_nthreads; ++i) {
            if (g_fibers[i].state == READY) g_round.push_back(i);
            if (g_fibers[i].state != DONE) all_done = false;
        }
        if (all_done) return nullptr;
        if (g_round.empty()) fail_deadlock();
        for (size_t i = g_round.size(); i > 1; --i) {
            size_t j = g_rng.below(static_cast<unsigned>(i));
            unsigned t = g_round[i - 1];
            g_round[i - 1] = g_round[j];
            g_round[j] = t;
        }
    }
}

// Called by the running fiber once it has recorded why it stops.
static void block_current(bool exiting) {
    Fiber* self = g_cur;
    Fiber* next = pick_next();
    if (next == self) return;  // released in the same resolution, nothing to switch
    switch_to(self, next, exiting);
}

static void fiber_main() {
#ifdef CUSOFT_SIMT_ASAN
    // The very first fiber is entered from the main stack: remember its bounds for the way back.
    const void* old_bottom;
    size_t old_size;
    __sanitizer_finish_switch_fiber(nullptr, &old_bottom, &old_size);
    if (g_main_stack_bottom == nullptr) {
        g_main_stack_bottom = old_bottom;
        g_main_stack_size = old_size;
    }
#endif
    g_body(g_body_ctx);
    g_cur->state = DONE;
    block_current(true);
    fail("internal error: a finished fiber was resumed");
}

// ---- synchronisation ---------------------------------------------------------------------------
int block_barrier(int op, int pred, const char* file, int line) {
    Fiber* f = g_cur;
    if (!f) fail("%s called outside a kernel", op_name(op));
    f->state = WAIT_BLOCK;
    f->op = op;
    f->pred = pred;
    f->file = file;
    f->line = line;
    block_current(false);
    return static_cast<int>(f->result);
}

unsigned long long warp_op(int op, unsigned mask, unsigned long long value, int arg, int width, const char* file,
                           int line) {
    Fiber* f = g_cur;
    if (!f) fail("%s called outside a kernel", op_name(op));
    if (!(mask >> f->lane & 1u))
        fail("%s at %s:%d: mask 0x%08x does not include the calling lane %u (warp %u); CUDA leaves this undefined",
             op_name(op), file, line, mask, f->lane, f->warp);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s at %s:%d: width %d is not a power of two between 1 and 32", op_name(op), file, line, width);
    if ((op == OP_SHFL_UP || op == OP_SHFL_DOWN) && (arg < 0 || arg > 31))
        fail("%s at %s:%d: delta %u is out of range [0, 31]", op_name(op), file, line, static_cast<unsigned>(arg));
    if (op == OP_SHFL_XOR && (arg < 0 || arg > 31))
        fail("%s at %s:%d: laneMask %d is out of range [0, 31]", op_name(op), file, line, arg);
    f->state = WAIT_WARP;
    f->op = op;
    f->mask = mask;
    f->value = value;
    f->arg = arg;
    f->width = width;
    f->file = file;
    f->line = line;
    block_current(false);
    return f->result;
}

unsigned active_mask() {
    Fiber* f = g_cur;
    if (!f) fail("__activemask called outside a kernel");
    unsigned m = 0;
    unsigned base = f->warp * 32;
    for (unsigned l = 0; l < 32 && base + l < g_nthreads; ++l)
        if (g_fibers[base + l].state != DONE) m |= 1u << l;
    return m;
}

// CUDA: every *non-exited* lane named in the mask must make the same call with the same mask.
// Exited lanes (and lanes past the end of a partial last warp) are skipped, but reading a
// value from one is undefined, and so an error here.
static unsigned gone_lanes(unsigned warp, unsigned mask) {
    unsigned gone = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && (warp * 32 + l >= g_nthreads || g_fibers[warp * 32 + l].state == DONE))
            gone |= 1u << l;
    return gone;
}

static bool warp_group_complete(unsigned warp, const Fiber& first) {
    unsigned base = warp * 32;
    unsigned live = first.mask & ~gone_lanes(warp, first.mask);
    for (unsigned l = 0; l < 32; ++l) {
        if (!(live >> l & 1u)) continue;
        Fiber& o = g_fibers[base + l];
        if (o.state != WAIT_WARP || o.mask != first.mask || o.op != first.op) return false;  // not all there yet
        if (o.width != first.width) {
            g_cur = &o;
            fail("%s at %s:%d: lanes of one call disagree on width (%d and %d)", op_name(o.op), o.file, o.line,
                 o.width, first.width);
        }
    }
    return true;
}

static void release_warp_group(unsigned warp, Fiber& first) {
    unsigned base = warp * 32;
    unsigned mask = first.mask;
    unsigned gone = gone_lanes(warp, mask);
    unsigned live = mask & ~gone;
    unsigned long long ballot = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((live >> l & 1u) && g_fibers[base + l].value) ballot |= 1ull << l;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(live >> l & 1u)) continue;
        Fiber& o = g_fibers[base + l];
        unsigned w = static_cast<unsigned>(o.width);
        unsigned seg_lo = l & ~(w - 1), seg_hi = seg_lo + w - 1;
        unsigned src = l;
        switch (o.op) {
            case OP_SHFL_IDX: src = seg_lo | (static_cast<unsigned>(o.arg) & (w - 1)); break;
            case OP_SHFL_UP: src = (l >= seg_lo + static_cast<unsigned>(o.arg)) ? l - o.arg : l; break;
            case OP_SHFL_DOWN: src = (l + static_cast<unsigned>(o.arg) <= seg_hi) ? l + o.arg : l; break;
            // CUDA: a lane may read an earlier segment, but never a later one.
            case OP_SHFL_XOR: src = ((l ^ static_cast<unsigned>(o.arg)) <= seg_hi) ? (l ^ o.arg) : l; break;
            default: break;
        }
        switch (o.op) {
            case OP_SHFL_IDX:
            case OP_SHFL_UP:
            case OP_SHFL_DOWN:
            case OP_SHFL_XOR:
                if (!(mask >> src & 1u)) {
                    g_cur = &o;
                    fail("%s at %s:%d: lane %u reads lane %u, which is not in the mask 0x%08x (its value is "
                         "undefined on a GPU)",
                         op_name(o.op), o.file, o.line, l, src, mask);
                }
                if (gone >> src & 1u) {
                    g_cur = &o;
                    fail("%s at %s:%d: lane %u reads lane %u of warp %u, which %s (its value is undefined on a "
                         "GPU)",
                         op_name(o.op), o.file, o.line, l, src, warp,
                         base + src >= g_nthreads ? "does not exist (partial last warp)" : "has exited");
                }
                o.result = g_fibers[base + src].value;
                break;
            case OP_BALLOT: o.result = ballot; break;
            case OP_ANY: o.result = ballot != 0; break;
            case OP_ALL: o.result = ballot == live; break;
            case OP_MATCH_ANY: {
                unsigned m = 0;
                for (unsigned k = 0; k < 32; ++k)
                    if ((live >> k & 1u) && g_fibers[base + k].value == o.value) m |= 1u << k;
                o.result = m;
                break;
            }
            default: o.result = 0; break;
        }
    }
    for (unsigned l = 0; l < 32; ++l)
        if (live >> l & 1u) g_fibers[base + l].state = READY;
}

// How the resolver releases the groups that could go on, chosen per block from the seed:
// LOCKSTEP releases all (warps move together), RANDOM each with probability 1/2, SERIAL only
// those of the first warp in a random warp order (one warp runs ahead until it blocks).  A
// missing __syncthreads between warps shows up under RANDOM or SERIAL even when a warp
// intrinsic separates the write from the read.
enum Schedule { LOCKSTEP, RANDOM, SERIAL, MIXED };
static Schedule g_schedule_setting = MIXED;
static Schedule g_schedule = LOCKSTEP;
static std::vector<unsigned> g_warp_rank;
struct Candidate {
    unsigned warp, lead;  // lead: a fiber of the warp group, or k_start for the warp's start
};
static const unsigned k_start = ~0u;
static std::vector<Candidate> g_candidates;
static std::vector<char> g_chosen;

static void resolve() {
    unsigned waiting_block = 0, done = 0;
    for (unsigned i = 0; i < g_nthreads; ++i) {
        if (g_fibers[i].state == WAIT_BLOCK) ++waiting_block;
        if (g_fibers[i].state == DONE) ++done;
    }
    if (waiting_block && done) {
        Fiber* waiter = nullptr;
        Fiber* gone = nullptr;
        for (unsigned i = 0; i < g_nthreads; ++i) {
            if (!waiter && g_fibers[i].state == WAIT_BLOCK) waiter = &g_fibers[i];
            if (!gone && g_fibers[i].state == DONE) gone = &g_fibers[i];
        }
        g_cur = waiter;
        fail("%s at %s:%d waits for all %u threads of the block, but %u of them have exited (e.g. thread "
             "(%u,%u,%u)); every thread must reach the barrier",
             op_name(waiter->op), waiter->file, waiter->line, g_nthreads, done, gone->tid.x, gone->tid.y,
             gone->tid.z);
    }
    if (waiting_block == g_nthreads) {
        long long count = 0;
        for (unsigned i = 0; i < g_nthreads; ++i) count += g_fibers[i].pred != 0;
        for (unsigned i = 0; i < g_nthreads; ++i) {
            Fiber& f = g_fibers[i];
            switch (f.op) {
                case OP_SYNCTHREADS_COUNT: f.result = static_cast<unsigned long long>(count); break;
                case OP_SYNCTHREADS_AND: f.result = count == g_nthreads; break;
                case OP_SYNCTHREADS_OR: f.result = count != 0; break;
                default: f.result = 0; break;
            }
            f.state = READY;
        }
        return;
    }
    // Groups that could go on: a warp not started yet, or a complete warp-intrinsic call.
    g_candidates.clear();
    unsigned nwarps = (g_nthreads + 31) / 32;
    for (unsigned w = 0; w < nwarps; ++w) {
        unsigned handled = 0;
        bool start = false;
        for (unsigned l = 0; l < 32 && w * 32 + l < g_nthreads; ++l) {
            Fiber& f = g_fibers[w * 32 + l];
            if (f.state == WAIT_START) start = true;
            if (f.state != WAIT_WARP || (handled >> l & 1u)) continue;
            handled |= 1u << l;
            if (warp_group_complete(w, f)) {
                handled |= f.mask;
                g_candidates.push_back(Candidate{w, w * 32 + l});
            }
        }
        if (start) g_candidates.push_back(Candidate{w, k_start});
    }
    if (g_candidates.empty()) return;
    // Which of them go on now decides how far warps drift apart (see Schedule).
    size_t n = g_candidates.size();
    g_chosen.assign(n, 0);
    if (g_schedule == LOCKSTEP) {
        g_chosen.assign(n, 1);
    } else if (g_schedule == SERIAL) {
        unsigned best = ~0u;
        for (size_t i = 0; i < n; ++i) {
            unsigned rank = g_warp_rank[g_candidates[i].warp];
            best = rank < best ? rank : best;
        }
        for (size_t i = 0; i < n; ++i) g_chosen[i] = g_warp_rank[g_candidates[i].warp] == best;
    } else {
        bool any = false;
        for (size_t i = 0; i < n; ++i) any |= (g_chosen[i] = static_cast<char>(g_rng.next() >> 63));
        if (!any) g_chosen[g_rng.below(static_cast<unsigned>(n))] = 1;
    }
    for (size_t i = 0; i < n; ++i) {
        if (!g_chosen[i]) continue;
        const Candidate& c = g_candidates[i];
        if (c.lead == k_start) {
            for (unsigned l = 0; l < 32 && c.warp * 32 + l < g_nthreads; ++l)
                if (g_fibers[c.warp * 32 + l].state == WAIT_START) g_fibers[c.warp * 32 + l].state = READY;
        } else {
            release_warp_group(c.warp, g_fibers[c.lead]);
        }
    }
}

// ---- launches ----------------------------------------------------------------------------------
void* dynamic_smem_ptr() { return g_dyn_smem; }

static void run_block(unsigned long long seed, unsigned long long block_linear) {
    g_rng.s = seed ^ (0x632be59bd9b4e019ULL * (block_linear + 1));
    g_rng.next();
    g_schedule = g_schedule_setting == MIXED ? static_cast<Schedule>(g_rng.below(3)) : g_schedule_setting;
    unsigned nwarps = (g_nthreads + 31) / 32;
    g_warp_rank.resize(nwarps);
    for (unsigned w = 0; w < nwarps; ++w) g_warp_rank[w] = w;
    for (unsigned w = nwarps; w > 1; --w) {
        unsigned j = g_rng.below(w);
        unsigned t = g_warp_rank[w - 1];
        g_warp_rank[w - 1] = g_warp_rank[j];
        g_warp_rank[j] = t;
    }
    for (unsigned i = 0; i < g_nthreads; ++i) {
        Fiber& f = g_fibers[i];
        f.state = WAIT_START;
        f.op = 0;
        f.result = 0;
        prepare_fiber(f);
    }
    g_round.clear();
    g_round_pos = 0;
    Fiber* first = pick_next();
    if (first) switch_to(nullptr, first, false);
    g_cur = nullptr;
    g_thread_idx = &k_no_thread;
}

static unsigned long long gcd(unsigned long long a, unsigned long long b) {
    while (b) {
        unsigned long long t = a % b;
        a = b;
        b = t;
    }
    return a;
}

}  // namespace detail

void* dynamic_smem() { return detail::dynamic_smem_ptr(); }

void run_launch(const LaunchConfig& cfg, FiberBody body, void* ctx) {
    using namespace detail;
    unsigned nthreads = cfg.block[0] * cfg.block[1] * cfg.block[2];
    g_nthreads = nthreads;
    ensure_fibers(nthreads);
    g_block_dim = dim3(cfg.block[0], cfg.block[1], cfg.block[2]);
    g_grid_dim = dim3(cfg.grid[0], cfg.grid[1], cfg.grid[2]);
    for (unsigned i = 0; i < nthreads; ++i) {
        Fiber& f = g_fibers[i];
        f.linear = i;
        f.warp = i / 32;
        f.lane = i % 32;
        f.tid.x = i % cfg.block[0];
        f.tid.y = (i / cfg.block[0]) % cfg.block[1];
        f.tid.z = i / (cfg.block[0] * cfg.block[1]);
    }
    g_body = body;
    g_body_ctx = ctx;
    // Its own heap block of exactly shared_mem bytes, so ASan sees overruns of it.
    void* smem = nullptr;
    if (cfg.shared_mem == 0)
        smem = malloc(0);  // any access is a heap overflow
    else if (posix_memalign(&smem, 256, cfg.shared_mem) != 0)
        fail("cannot allocate %llu bytes of dynamic shared memory", cfg.shared_mem);
    g_dyn_smem = static_cast<unsigned char*>(smem);

    // Blocks run in a seeded order: an affine permutation of the linear block index.
    unsigned long long nblocks = 1ULL * cfg.grid[0] * cfg.grid[1] * cfg.grid[2];
    Rng order = {cfg.seed ^ 0x5851f42d4c957f2dULL};
    unsigned long long a = 1, c = 0;
    if (nblocks > 1) {
        do a = order.next() % nblocks; while (a == 0 || gcd(a, nblocks) != 1);
        c = order.next() % nblocks;
    }
    for (unsigned long long k = 0; k < nblocks; ++k) {
        unsigned long long b = static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * k + c) % nblocks);
        g_block_idx.x = static_cast<unsigned>(b % cfg.grid[0]);
        g_block_idx.y = static_cast<unsigned>((b / cfg.grid[0]) % cfg.grid[1]);
        g_block_idx.z = static_cast<unsigned>(b / (1ULL * cfg.grid[0] * cfg.grid[1]));
        if (cfg.shared_mem) memset(g_dyn_smem, 0xff, cfg.shared_mem);  // stale data reads as NaN
        run_block(cfg.seed, b);
    }
    free(g_dyn_smem);
    g_dyn_smem = nullptr;
}

// ---- the launch server -------------------------------------------------------------------------
// Protocol (native byte order, both ends on one machine).  At start the server writes
// "SIMT", u32 version, u32 nkernels, then per kernel u32 len + name, u32 nparams, and per
// parameter u8 kind + u32 size.  Each request: "LNCH", u32 kernel, u32 grid[3], u32 block[3],
// u64 shared_mem, u64 seed, u32 nbufs, u32 nargs, per buffer u64 size + bytes, per argument
// u8 'p' + u32 buffer + u64 offset, u8 'n' (null pointer) or u8 's' + u32 size + bytes.  Reply: "DONE", then every
// buffer's bytes.  "QUIT" or end of input stops the server.  Any error ends the process with
// a report on stderr; the Python side turns that into an exception.
namespace {

FILE* g_in = nullptr;
FILE* g_out = nullptr;

void read_exact(void* p, size_t n) {
    if (n && fread(p, 1, n, g_in) != n) {
        if (feof(g_in)) _exit(0);
        detail::fail("reading the launch request failed: %s", strerror(errno));
    }
}
template <class T>
T read_val() {
    T v;
    read_exact(&v, sizeof v);
    return v;
}
void write_exact(const void* p, size_t n) {
    if (n && fwrite(p, 1, n, g_out) != n) detail::fail("writing the launch reply failed: %s", strerror(errno));
}
template <class T>
void write_val(T v) {
    write_exact(&v, sizeof v);
}

const unsigned k_version = 1;

}  // namespace

int serve(int argc, char** argv, const KernelEntry* table, unsigned count) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s IN_FD OUT_FD  (started by cusoft.simt)\n", argv[0]);
        return 2;
    }
    g_in = fdopen(atoi(argv[1]), "rb");
    g_out = fdopen(atoi(argv[2]), "wb");
    if (!g_in || !g_out) {
        fprintf(stderr, "cannot open the request/reply descriptors\n");
        return 2;
    }
    setvbuf(stdout, nullptr, _IOLBF, 0);  // kernel printf output survives a crash that follows it
    setvbuf(g_in, nullptr, _IOFBF, 1 << 20);
    setvbuf(g_out, nullptr, _IOFBF, 1 << 20);
    if (const char* sched = getenv("CUSOFT_SIMT_SCHEDULE")) {
        if (!strcmp(sched, "lockstep")) detail::g_schedule_setting = detail::LOCKSTEP;
        else if (!strcmp(sched, "random")) detail::g_schedule_setting = detail::RANDOM;
        else if (!strcmp(sched, "serial")) detail::g_schedule_setting = detail::SERIAL;
    }
    if (const char* kb = getenv("CUSOFT_SIMT_STACK_KB")) {
        long v = atol(kb);
        if (v >= 16) detail::g_stack_bytes = static_cast<size_t>(v) * 1024;
    }
    write_exact("SIMT", 4);
    write_val<unsigned>(k_version);
    write_val<unsigned>(count);
    for (unsigned k = 0; k < count; ++k) {
        unsigned len = static_cast<unsigned>(strlen(table[k].name));
        write_val<unsigned>(len);
        write_exact(table[k].name, len);
        write_val<unsigned>(table[k].nparams);
        for (unsigned p = 0; p < table[k].nparams; ++p) {
            write_val<unsigned char>(static_cast<unsigned char>(table[k].params[p].kind));
            write_val<unsigned>(table[k].params[p].size);
        }
    }
    fflush(g_out);

    std::vector<void*> bufs;
    std::vector<unsigned long long> sizes;
    std::vector<ArgSlot> args;
    std::vector<std::vector<unsigned char>> scalars;
    for (;;) {
        char magic[4];
        read_exact(magic, 4);
        if (memcmp(magic, "QUIT", 4) == 0) return 0;
        if (memcmp(magic, "LNCH", 4) != 0) detail::fail("bad request header");
        unsigned kernel = read_val<unsigned>();
        LaunchConfig cfg;
        for (int i = 0; i < 3; ++i) cfg.grid[i] = read_val<unsigned>();
        for (int i = 0; i < 3; ++i) cfg.block[i] = read_val<unsigned>();
        cfg.shared_mem = read_val<unsigned long long>();
        cfg.seed = read_val<unsigned long long>();
        unsigned nbufs = read_val<unsigned>();
        unsigned nargs = read_val<unsigned>();
        if (kernel >= count) detail::fail("kernel index %u out of range", kernel);
        const KernelEntry& e = table[kernel];
        detail::g_kernel_name = e.name;
        if (nargs != e.nparams) detail::fail("%s takes %u arguments, got %u", e.name, e.nparams, nargs);
        unsigned long long nthreads = 1ULL * cfg.block[0] * cfg.block[1] * cfg.block[2];
        if (nthreads == 0 || nthreads > 1024 || cfg.grid[0] == 0 || cfg.grid[1] == 0 || cfg.grid[2] == 0)
            detail::fail("invalid launch configuration");
        bufs.assign(nbufs, nullptr);
        sizes.assign(nbufs, 0);
        for (unsigned b = 0; b < nbufs; ++b) {
            sizes[b] = read_val<unsigned long long>();
            // Exactly the array's size, 256-byte aligned like cudaMalloc; ASan's redzone starts
            // at the first byte past the end.
            if (sizes[b] == 0)
                bufs[b] = malloc(0);
            else if (posix_memalign(&bufs[b], 256, sizes[b]) != 0)
                detail::fail("cannot allocate %llu bytes for argument buffer %u", sizes[b], b);
            read_exact(bufs[b], sizes[b]);
        }
        args.assign(nargs, ArgSlot{0, nullptr, nullptr, 0});
        scalars.assign(nargs, {});
        for (unsigned a = 0; a < nargs; ++a) {
            char kind = read_val<char>();
            args[a].kind = kind;
            if (kind == 'p') {
                unsigned b = read_val<unsigned>();
                unsigned long long off = read_val<unsigned long long>();
                if (b >= nbufs || off > sizes[b]) detail::fail("bad buffer reference in argument %u", a);
                args[a].ptr = static_cast<unsigned char*>(bufs[b]) + off;
            } else if (kind == 'n') {
                args[a].kind = 'p';  // a null pointer
            } else if (kind == 's') {
                unsigned size = read_val<unsigned>();
                scalars[a].resize(size);
                read_exact(scalars[a].data(), size);
                args[a].bytes = scalars[a].data();
                args[a].size = size;
            } else {
                detail::fail("bad argument kind in request");
            }
            const ParamInfo& p = e.params[a];
            if ((p.kind == 'p') != (args[a].kind == 'p') || (kind == 's' && args[a].size != p.size))
                detail::fail("argument %u does not match the parameter of %s", a, e.name);
        }
        e.invoke(cfg, args.data());
        fflush(stdout);
        write_exact("DONE", 4);
        for (unsigned b = 0; b < nbufs; ++b) {
            write_exact(bufs[b], sizes[b]);
            free(bufs[b]);
        }
        fflush(g_out);
    }
}

}  // namespace cusoft_simt
