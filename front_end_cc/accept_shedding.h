// Accepting a connection, or shedding the waiting ones while the process is out of
// descriptors.
//
// Why: a listener whose accept() fails with EMFILE/ENFILE leaves the connection in the
// backlog, where it hangs (the client sees a connected socket and no answer), and a poll on
// the listening socket reports it again at once, so the accept loop would spin. (gRPC 1.51's
// own listener gave up for good on that error; listener.h accepts for it.)
//
// How: on EMFILE/ENFILE, a descriptor held in reserve (/dev/null) is given up to accept each
// waiting connection and close it at once, then taken back, until the backlog is empty. A
// client shed this way sees its connection closed (UNAVAILABLE, which it retries), not a hang;
// established connections and their calls are untouched.
#ifndef DPSR_FRONT_END_ACCEPT_SHEDDING_H_
#define DPSR_FRONT_END_ACCEPT_SHEDDING_H_

#include <cstdint>

namespace dpsr {
namespace front_end {

// Opens the reserve descriptor; call once at start, before connections are accepted.
// Returns false when it cannot: AcceptOrShed then tries again each time descriptors are out,
// and until it has one, connections that arrive meanwhile wait in the backlog.
bool ReserveDescriptorForShedding();

// accept4(listener, SOCK_NONBLOCK | SOCK_CLOEXEC): the new connection, or -1 with errno.
// errno EAGAIN: none is waiting, or descriptors are out and every waiting one was shed (or
// none could be, for want of a reserve). Other errors are accept4's.
int AcceptOrShed(int listener);

// Connections closed at accept because descriptors had run out, since the process started.
uint64_t ShedConnections();

}  // namespace front_end
}  // namespace dpsr

#endif  // DPSR_FRONT_END_ACCEPT_SHEDDING_H_
