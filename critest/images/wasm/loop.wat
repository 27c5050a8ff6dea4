;; WASI (preview1) module that never exits on its own: prints "wasm loop started", then
;; "tick" once a second (sleeping in poll_oneoff). For stop/kill tests.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Memory map: 0 iovec, 16 nwritten/nevents, 64 messages,
  ;; 256 subscription (48 bytes), 512 event (32 bytes).
  (data (i32.const 64) "wasm loop started\n")
  (data (i32.const 96) "tick\n")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))

  (func (export "_start")
    (call $write (i32.const 64) (i32.const 18))
    ;; One relative clock subscription: userdata 0, tag 0 (clock), clock id 1 (monotonic),
    ;; timeout 1 s, precision 0, flags 0.
    (i64.store (i32.const 256) (i64.const 0))
    (i32.store8 (i32.const 264) (i32.const 0))
    (i32.store (i32.const 272) (i32.const 1))
    (i64.store (i32.const 280) (i64.const 1000000000))
    (i64.store (i32.const 288) (i64.const 0))
    (i32.store16 (i32.const 296) (i32.const 0))
    (loop $forever
      ;; If the host has no clock subscriptions this degrades to a busy loop, still endless.
      (drop (call $poll_oneoff (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 16)))
      (call $write (i32.const 96) (i32.const 5))
      (br $forever))))
