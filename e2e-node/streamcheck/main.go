// streamcheck drives exec, attach and port-forward through a kubelet's streaming endpoints
// (/exec, /attach, /portForward on the kubelet's read-write port, which the kubelet proxies
// to the runtime's streaming server) the way kubectl does, with client-go:
//
//	streamcheck -kubelet https://127.0.0.1:10350 exec -transport T NS POD CONTAINER
//	streamcheck -kubelet ... exec-tty    -transport T NS POD CONTAINER
//	streamcheck -kubelet ... attach      -transport T NS POD CONTAINER
//	streamcheck -kubelet ... portforward -transport T NS POD PORT [-expect TEXT]
//
// Transports (what reaches the runtime's streaming server depends on it, because a 1.36+
// kubelet (ExtendWebSocketsToKubelet) translates the newest WebSocket protocols to SPDY
// itself and proxies everything else unchanged):
//
//   - spdy: SPDY/3.1, as kubectl before 1.30; proxied to the runtime as SPDY.
//   - websocket: exec/attach with v5.channel.k8s.io, port-forward with SPDY tunneled in
//     WebSocket (SPDY/3.1+portforward.k8s.io), as kubectl 1.31+; the kubelet translates
//     both, so the runtime sees SPDY.
//   - websocket-v4: exec/attach with v4.channel.k8s.io, port-forward in the legacy form
//     the kubelet's own server defines (/portForward/NS/POD?port=P, v4.channel.k8s.io;
//     channel 0 data, channel 1 errors, each opened by the port, 2 bytes little-endian);
//     proxied unchanged, so the runtime's own WebSocket server answers.
//
// Each check prints one line starting "ok:" and exits 0, or prints what went wrong and
// exits 1. The kubelet must allow anonymous requests (authentication.anonymous.enabled,
// authorization AlwaysAllow); its serving certificate is self-signed, so it is not checked.
//
//   - exec: `sh -c 'echo out-$0; cat; echo err-$0 >&2; exit 3' x` with stdin "in-data\n":
//     stdout "out-x\nin-data\n", stderr "err-x\n", exit code 3 reported as such (v4 cannot
//     close stdin, so there the command has no `cat` and no stdin is sent).
//   - exec-tty: `tty` with a terminal: its output names /dev/pts/N.
//   - attach: the container must run a loop that echoes "got:<line>" for each stdin line
//     (stdin: true in the pod spec); sends a random line and waits for the echo.
//   - portforward: GET / through the forwarded port; expects HTTP 200 (and TEXT in the
//     body), twice over one connection for spdy and websocket (client-go's port forwarder).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	gwebsocket "github.com/gorilla/websocket"
	"k8s.io/apimachinery/pkg/util/httpstream"
	restclient "k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
)

var (
	kubelet   = flag.String("kubelet", "https://127.0.0.1:10350", "the kubelet's read-write endpoint")
	timeout   = flag.Duration("timeout", 30*time.Second, "time limit for the whole check")
	transport string
	expect    string
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: streamcheck [-kubelet URL] [-timeout D] exec|exec-tty|attach|portforward -transport spdy|websocket NS POD CONTAINER|PORT [-expect TEXT]")
	}
	flag.Parse()
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(2)
	}
	sub := flag.NewFlagSet(flag.Arg(0), flag.ExitOnError)
	sub.StringVar(&transport, "transport", "spdy", "spdy, websocket or websocket-v4")
	sub.StringVar(&expect, "expect", "", "portforward: text the response body must contain")
	if err := sub.Parse(flag.Args()[1:]); err != nil || sub.NArg() != 3 {
		flag.Usage()
		os.Exit(2)
	}
	if transport != "spdy" && transport != "websocket" && transport != "websocket-v4" {
		fail("unknown transport %q", transport)
	}
	ns, pod, target := sub.Arg(0), sub.Arg(1), sub.Arg(2)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var msg string
	var err error
	switch flag.Arg(0) {
	case "exec":
		msg, err = checkExec(ctx, ns, pod, target)
	case "exec-tty":
		msg, err = checkExecTTY(ctx, ns, pod, target)
	case "attach":
		msg, err = checkAttach(ctx, ns, pod, target)
	case "portforward":
		if transport == "websocket-v4" {
			msg, err = checkPortForwardWebSocketV4(ctx, ns, pod, target)
		} else {
			msg, err = checkPortForward(ctx, ns, pod, target)
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		fail("%s over %s: %v", flag.Arg(0), transport, err)
	}
	fmt.Printf("ok: %s over %s: %s\n", flag.Arg(0), transport, msg)
}

func fail(format string, args ...any) {
	fmt.Printf("error: "+format+"\n", args...)
	os.Exit(1)
}

func restConfig() *restclient.Config {
	return &restclient.Config{Host: *kubelet, TLSClientConfig: restclient.TLSClientConfig{Insecure: true}}
}

// streamURL is <kubelet>/<kind>/<ns>/<pod>/<container>?<query>.
func streamURL(kind, ns, pod, container string, query url.Values) *url.URL {
	u, err := url.Parse(*kubelet)
	if err != nil {
		fail("bad -kubelet: %v", err)
	}
	u.Path = "/" + strings.Join([]string{kind, ns, pod, container}, "/")
	u.RawQuery = query.Encode()
	return u
}

func executor(u *url.URL) (remotecommand.Executor, error) {
	switch transport {
	case "websocket":
		return remotecommand.NewWebSocketExecutor(restConfig(), "GET", u.String())
	case "websocket-v4":
		return remotecommand.NewWebSocketExecutorForProtocols(restConfig(), "GET", u.String(), "v4.channel.k8s.io")
	}
	return remotecommand.NewSPDYExecutor(restConfig(), "POST", u)
}

func execQuery(tty bool, stdin bool, command ...string) url.Values {
	q := url.Values{}
	for _, c := range command {
		q.Add("command", c)
	}
	q.Set("output", "1")
	if stdin {
		q.Set("input", "1")
	}
	if tty {
		q.Set("tty", "1")
	} else {
		q.Set("error", "1")
	}
	return q
}

func checkExec(ctx context.Context, ns, pod, container string) (string, error) {
	script, input, want := "echo out-$0; cat; echo err-$0 >&2; exit 3", "in-data\n", "out-x\nin-data\n"
	if transport == "websocket-v4" {
		script, input, want = "echo out-$0; echo err-$0 >&2; exit 3", "", "out-x\n"
	}
	u := streamURL("exec", ns, pod, container, execQuery(false, input != "", "sh", "-c", script, "x"))
	ex, err := executor(u)
	if err != nil {
		return "", err
	}
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr}
	if input != "" {
		opts.Stdin = strings.NewReader(input)
	}
	err = ex.StreamWithContext(ctx, opts)
	var exitErr exec.CodeExitError
	switch {
	case errors.As(err, &exitErr) && exitErr.Code == 3:
	case err == nil:
		return "", fmt.Errorf("exit code 0 reported, want 3 (stdout %q, stderr %q)", stdout.String(), stderr.String())
	default:
		return "", fmt.Errorf("stream: %v (stdout %q, stderr %q)", err, stdout.String(), stderr.String())
	}
	if stdout.String() != want || stderr.String() != "err-x\n" {
		return "", fmt.Errorf("stdout %q (want %q), stderr %q (want \"err-x\\n\")", stdout.String(), want, stderr.String())
	}
	if input == "" {
		return "stdout and stderr apart, exit code 3", nil
	}
	return "stdin relayed, stdout and stderr apart, exit code 3", nil
}

func checkExecTTY(ctx context.Context, ns, pod, container string) (string, error) {
	u := streamURL("exec", ns, pod, container, execQuery(true, false, "tty"))
	ex, err := executor(u)
	if err != nil {
		return "", err
	}
	var stdout bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Tty: true}); err != nil {
		return "", fmt.Errorf("stream: %v (output %q)", err, stdout.String())
	}
	out := strings.TrimSpace(stdout.String())
	if !strings.HasPrefix(out, "/dev/pts/") {
		return "", fmt.Errorf("tty printed %q, want /dev/pts/N", out)
	}
	return "tty is " + out, nil
}

// lineWatcher is an io.Writer that closes found once the text it waits for has been written.
type lineWatcher struct {
	buf   bytes.Buffer
	want  string
	found chan struct{}
	done  bool
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if !w.done && strings.Contains(w.buf.String(), w.want) {
		w.done = true
		close(w.found)
	}
	return len(p), nil
}

func checkAttach(ctx context.Context, ns, pod, container string) (string, error) {
	q := url.Values{"input": {"1"}, "output": {"1"}, "error": {"1"}}
	ex, err := executor(streamURL("attach", ns, pod, container, q))
	if err != nil {
		return "", err
	}
	token := "ping-" + randomHex(4)
	out := &lineWatcher{want: "got:" + token, found: make(chan struct{})}
	stdinR, stdinW := io.Pipe()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan error, 1)
	go func() {
		res <- ex.StreamWithContext(actx, remotecommand.StreamOptions{Stdin: stdinR, Stdout: out, Stderr: io.Discard})
	}()
	// The line goes out only once the stream is up; resend until the echo arrives.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	go func() {
		for {
			if _, err := io.WriteString(stdinW, token+"\n"); err != nil {
				return
			}
			select {
			case <-out.found:
				return
			case <-actx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	select {
	case <-out.found:
		cancel()
		stdinW.Close()
		return "stdin line echoed back by the container: got:" + token, nil
	case err := <-res:
		return "", fmt.Errorf("stream ended before the echo: %v (output %q)", err, out.buf.String())
	case <-ctx.Done():
		return "", fmt.Errorf("no echo of %s within %s (output %q)", token, *timeout, out.buf.String())
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// checkPortForward runs client-go's port forwarder, over SPDY or SPDY tunneled in WebSocket.
func checkPortForward(ctx context.Context, ns, pod, port string) (string, error) {
	u := streamURL("portForward", ns, pod, "", nil)
	u.Path = strings.TrimSuffix(u.Path, "/")
	var dialer httpstream.Dialer
	if transport == "websocket" {
		var err error
		if dialer, err = portforward.NewSPDYOverWebsocketDialer(u, restConfig()); err != nil {
			return "", err
		}
	} else {
		rt, upgrader, err := spdy.RoundTripperFor(restConfig())
		if err != nil {
			return "", err
		}
		dialer = spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	defer close(stop)
	var pfErr bytes.Buffer
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:" + port}, stop, ready, io.Discard, &pfErr)
	if err != nil {
		return "", err
	}
	res := make(chan error, 1)
	go func() { res <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-res:
		return "", fmt.Errorf("port forwarder: %v %s", err, pfErr.String())
	case <-ctx.Done():
		return "", fmt.Errorf("port forwarder not ready: %s", pfErr.String())
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		return "", fmt.Errorf("forwarded ports: %v %v", ports, err)
	}
	local := fmt.Sprintf("127.0.0.1:%d", ports[0].Local)
	// Two requests: each is its own stream on the one SPDY connection.
	var msg string
	for i := 0; i < 2; i++ {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", local)
		if err != nil {
			return "", err
		}
		msg, err = httpGet(ctx, conn)
		conn.Close()
		if err != nil {
			return "", fmt.Errorf("request %d: %v %s", i+1, err, pfErr.String())
		}
	}
	return "2 requests through " + local + ": " + msg, nil
}

// httpGet sends "GET /" on conn and checks the response.
func httpGet(ctx context.Context, conn net.Conn) (string, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	if _, err := io.WriteString(conn, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
		return "", err
	}
	body, err := io.ReadAll(conn)
	if err != nil && len(body) == 0 {
		return "", err
	}
	return checkResponse(body)
}

func checkResponse(resp []byte) (string, error) {
	status, _, _ := strings.Cut(string(resp), "\r\n")
	if !strings.Contains(status, " 200") {
		return "", fmt.Errorf("response %q", firstBytes(resp, 200))
	}
	if expect != "" && !bytes.Contains(resp, []byte(expect)) {
		return "", fmt.Errorf("response lacks %q: %q", expect, firstBytes(resp, 300))
	}
	return fmt.Sprintf("%q, %d bytes", status, len(resp)), nil
}

func firstBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

func checkPortForwardWebSocketV4(ctx context.Context, ns, pod, port string) (string, error) {
	u := streamURL("portForward", ns, pod, "", url.Values{"port": {port}})
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.Scheme = strings.Replace(u.Scheme, "http", "ws", 1)
	dialer := gwebsocket.Dialer{
		TLSClientConfig:  &tls.Config{InsecureSkipVerify: true},
		Subprotocols:     []string{"v4.channel.k8s.io"},
		HandshakeTimeout: 10 * time.Second,
	}
	conn, resp, err := dialer.DialContext(ctx, u.String(), nil)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(resp.Body)
			return "", fmt.Errorf("dial %s: %v: HTTP %d %q", u, err, resp.StatusCode, firstBytes(body, 300))
		}
		return "", fmt.Errorf("dial %s: %v", u, err)
	}
	defer conn.Close()
	if conn.Subprotocol() != "v4.channel.k8s.io" {
		return "", fmt.Errorf("subprotocol %q negotiated", conn.Subprotocol())
	}
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(d)
	}
	var data, errs []byte
	seen := map[byte]bool{}
	read := func() error {
		typ, msg, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		if typ != gwebsocket.BinaryMessage || len(msg) == 0 {
			return fmt.Errorf("unexpected message type %d, %d bytes", typ, len(msg))
		}
		ch, payload := msg[0], msg[1:]
		if ch > 1 {
			return fmt.Errorf("message on channel %d", ch)
		}
		if !seen[ch] { // each channel opens with the port number
			seen[ch] = true
			if len(payload) < 2 {
				return fmt.Errorf("channel %d opened with %d bytes", ch, len(payload))
			}
			if p := binary.LittleEndian.Uint16(payload); fmt.Sprint(p) != port {
				return fmt.Errorf("channel %d opened for port %d", ch, p)
			}
			payload = payload[2:]
		}
		if ch == 0 {
			data = append(data, payload...)
		} else {
			errs = append(errs, payload...)
		}
		return nil
	}
	for !seen[0] || !seen[1] {
		if err := read(); err != nil {
			return "", fmt.Errorf("waiting for the port headers: %v", err)
		}
	}
	req := append([]byte{0}, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"...)
	if err := conn.WriteMessage(gwebsocket.BinaryMessage, req); err != nil {
		return "", err
	}
	for {
		err := read()
		if len(errs) > 0 {
			return "", fmt.Errorf("error channel: %q", errs)
		}
		if err != nil {
			if len(data) > 0 {
				break // the pod closed the connection after its response
			}
			return "", fmt.Errorf("reading: %v", err)
		}
		if _, cerr := checkResponse(data); cerr == nil && bytes.Contains(data, []byte("\r\n\r\n")) &&
			(expect == "" || bytes.Contains(data, []byte(expect))) {
			break
		}
	}
	msg, err := checkResponse(data)
	if err != nil {
		return "", err
	}
	return "legacy /portForward?port=" + port + " with v4.channel.k8s.io: " + msg, nil
}
