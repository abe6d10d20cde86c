// Connections shed while the process is out of descriptors, so that gRPC's listener never sees
// EMFILE/ENFILE.
//
// Why: gRPC 1.51's listener gives up for good on any accept() error but EAGAIN/ECONNABORTED.
// When descriptors run out (idle connections up to the limit), accept() fails with EMFILE and
// the port, still listening, never accepts again. Restarting the process recovers, but drops
// every established connection and refuses new ones until the fresh process listens.
//
// How: this file defines accept4(), which the executable exports in place of libc's (gRPC's
// shared library calls it through its PLT). It makes the system call; on EMFILE/ENFILE it
// gives up a descriptor held in reserve (/dev/null), accepts the waiting connection with it,
// closes that connection at once and takes the reserve back, until the backlog is empty; then
// it reports EAGAIN, so gRPC's listener re-arms and accepts again as soon as descriptors are
// free. A client shed this way sees its connection closed (UNAVAILABLE, which it retries), not
// a hang. Established connections and their calls are untouched. Other accept errors still
// reach gRPC (main.cc then drains and exits for a fresh process).
#ifndef DPSR_FRONT_END_ACCEPT_SHEDDING_H_
#define DPSR_FRONT_END_ACCEPT_SHEDDING_H_

#include <cstdint>

namespace dpsr {
namespace front_end {

// Opens the reserve descriptor; call once at start, before connections are accepted.
// Returns false when it cannot: accept4 then tries again each time descriptors are out, and
// until it has one, connections that arrive meanwhile wait in the backlog.
bool ReserveDescriptorForShedding();

// Connections closed at accept because descriptors had run out, since the process started.
uint64_t ShedConnections();

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_ACCEPT_SHEDDING_H_
