//! The CRI streaming server: the URLs that Exec, Attach and PortForward return, and the
//! SPDY/3.1 and WebSocket protocols kubelet and crictl speak on them.
