// NNG's name resolver (its posix_resolv_gai.c, compiled here unchanged with
// its entry point renamed) behind a front door of ours: a numeric IPv4
// address with a numeric port needs no lookup, so it is answered at once on
// the caller's thread instead of going through NNG's resolver threads.
//
// Why: in NNG 1.11 a lookup that ends while its operation is being cancelled
// or timed out (a dialer closed mid-lookup, as when a client is dropped while
// it redials a control plane that is down) can complete an operation that is
// already gone, and NNG then aborts the whole process ("pthread_mutex_lock:
// Invalid argument" from resolv_worker, nanomsg/nng#2110). Addresses given as
// host names still take that path.

#define nni_resolv_ip nni_resolv_ip_by_lookup
#include "platform/posix/posix_resolv_gai.c"
#undef nni_resolv_ip

#include <arpa/inet.h>

void nni_resolv_ip(const char *host, const char *serv, int af, bool passive,
    nng_sockaddr *sa, nni_aio *aio);

void
nni_resolv_ip(const char *host, const char *serv, int af, bool passive,
    nng_sockaddr *sa, nni_aio *aio)
{
	struct in_addr addr;
	unsigned long  port = 0;
	const char    *digit;

	if (host == NULL || serv == NULL || serv[0] == '\0' ||
	    (af != NNG_AF_INET && af != NNG_AF_UNSPEC) ||
	    inet_pton(AF_INET, host, &addr) != 1) {
		nni_resolv_ip_by_lookup(host, serv, af, passive, sa, aio);
		return;
	}
	for (digit = serv; *digit != '\0'; digit++) {
		if (*digit < '0' || *digit > '9' || port > 65535) {
			nni_resolv_ip_by_lookup(host, serv, af, passive, sa, aio);
			return;
		}
		port = port * 10 + (unsigned long) (*digit - '0');
	}
	if (port > 65535) {
		nni_resolv_ip_by_lookup(host, serv, af, passive, sa, aio);
		return;
	}
	if (nni_aio_begin(aio) != 0) {
		return;
	}
	sa->s_in.sa_family = NNG_AF_INET;
	sa->s_in.sa_port   = htons((uint16_t) port);
	sa->s_in.sa_addr   = addr.s_addr;
	nni_aio_finish(aio, 0, 0);
}
