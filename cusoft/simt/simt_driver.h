// simt_driver.h - the kernel table of a SIMT executable.  The generated main.cpp includes the
// kernel source, then this header, then lists one CUSOFT_SIMT_KERNEL(expr) per name expression.
// Parameter types come from the kernel's own signature by template deduction, so the launcher
// can check every argument's kind and size before the kernel runs.
#ifndef CUSOFT_SIMT_DRIVER_H
#define CUSOFT_SIMT_DRIVER_H

#include <tuple>
#include <type_traits>
#include <utility>

namespace cusoft_simt {

// One marshalled argument: a device pointer (address of the launch's copy of an array) or the
// raw bytes of a scalar.
struct ArgSlot {
    char kind;              // 'p' pointer, 's' scalar
    void* ptr;              // 'p': the address the kernel receives
    const unsigned char* bytes;  // 's': the value
    unsigned size;          // 's': number of bytes
};

struct ParamInfo {
    char kind;  // 'p' pointer, 'i' integer/bool/enum, 'f' floating (incl. __half), 'v' other
    unsigned size;
};

struct LaunchConfig {
    unsigned grid[3];
    unsigned block[3];
    unsigned long long shared_mem;
    unsigned long long seed;
};

typedef void (*FiberBody)(void* ctx);
// Runs every block of the launch; each fiber calls body(ctx).  Defined in simt_runtime.cpp.
void run_launch(const LaunchConfig& cfg, FiberBody body, void* ctx);

struct KernelEntry {
    const char* name;
    unsigned nparams;
    const ParamInfo* params;
    void (*invoke)(const LaunchConfig& cfg, const ArgSlot* args);
};

int serve(int argc, char** argv, const KernelEntry* table, unsigned count);

namespace detail {

template <class T>
constexpr ParamInfo param_info() {
    typedef typename std::remove_cv<T>::type U;
    return ParamInfo{std::is_pointer<U>::value ? 'p'
                     : (std::is_integral<U>::value || std::is_enum<U>::value) ? 'i'
                     : (std::is_floating_point<U>::value || std::is_same<U, __half>::value) ? 'f'
                     : 'v',
                     static_cast<unsigned>(sizeof(U))};
}

template <class T>
T unpack_arg(const ArgSlot& a) {
    typedef typename std::remove_cv<T>::type U;
    if constexpr (std::is_pointer<U>::value) {
        return reinterpret_cast<U>(a.ptr);
    } else {
        static_assert(std::is_trivially_copyable<U>::value, "kernel parameters must be trivially copyable");
        U v;
        memcpy(static_cast<void*>(&v), a.bytes, sizeof(U));
        return v;
    }
}

template <class... P>
struct Bundle {
    void (*fn)(P...);
    std::tuple<typename std::remove_cv<P>::type...> args;
};

template <class... P>
void fiber_body(void* ctx) {
    // A copy per thread: kernels may modify their by-value parameters.
    Bundle<P...>* b = static_cast<Bundle<P...>*>(ctx);
    std::apply(b->fn, b->args);
}

template <class... P, size_t... I>
void invoke_impl(void (*fn)(P...), const LaunchConfig& cfg, const ArgSlot* args, std::index_sequence<I...>) {
    Bundle<P...> b{fn, std::make_tuple(unpack_arg<P>(args[I])...)};
    (void)args;
    run_launch(cfg, &fiber_body<P...>, &b);
}

template <auto Fn>
struct Kernel;

template <class... P, void (*Fn)(P...)>
struct Kernel<Fn> {
    static constexpr ParamInfo params[sizeof...(P) + 1] = {param_info<P>()..., ParamInfo{'-', 0}};
    static void invoke(const LaunchConfig& cfg, const ArgSlot* args) {
        invoke_impl<P...>(Fn, cfg, args, std::index_sequence_for<P...>{});
    }
    static KernelEntry entry(const char* name) {
        return KernelEntry{name, static_cast<unsigned>(sizeof...(P)), params, &invoke};
    }
};

}  // namespace detail
}  // namespace cusoft_simt

// The parentheses let a name expression hold template-argument commas.
#define CUSOFT_SIMT_KERNEL(name, ...) ::cusoft_simt::detail::Kernel<&__VA_ARGS__>::entry(name)

#endif  // CUSOFT_SIMT_DRIVER_H
