package api

import (
	"net"
	"net/http"
	"strings"
)

// requireLoopbackHost answers 421 to every request whose Host is not a loopback name
// (localhost, 127.0.0.0/8, [::1], with or without a port). An open server listens on loopback
// only, so a legitimate request names it that way; any other name means a browser was pointed at
// it by DNS rebinding (a web site's own name re-resolved to 127.0.0.1), and that page must not
// reach an unauthenticated API.
func requireLoopbackHost(m *metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !isLoopbackHost(r.Host) {
				m.reject("misdirected")
				problem(w, r, http.StatusMisdirectedRequest, probMisdirected,
					"this server answers only requests addressed to localhost or a loopback address")
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// isLoopbackHost reports whether a Host header value names a loopback address.
func isLoopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sameOrigin answers 403 to a state-changing request (any method but GET, HEAD and OPTIONS) that
// a browser sent from another origin: Sec-Fetch-Site other than same-origin or none (so
// same-site is refused too), or, from browsers without it, an Origin whose host is not the
// request's Host. Requests without either header (curl, scripts) are not browser requests and
// pass. net/http's CrossOriginProtection implements exactly this; the answer is made a problem.
func sameOrigin(m *metrics) func(http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.reject("cross_origin")
		problem(w, r, http.StatusForbidden, probCrossOrigin,
			"cross-origin "+r.Method+" requests are refused; send it from the server's own origin or without a browser")
	}))
	return cop.Handler
}
