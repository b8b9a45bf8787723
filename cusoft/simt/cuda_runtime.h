// cuda_runtime.h stand-in for the cusoft SIMT harness: everything it would declare that kernels use comes
// from simt.h, which is force-included in front of every kernel source.
#include "simt.h"
