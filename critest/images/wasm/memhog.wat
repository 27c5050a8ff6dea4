;; WASI (preview1) module that allocates memory without bound: grows its linear memory by
;; 1 MiB at a time, writes to every 4 KiB page of it (so the pages are really resident),
;; and prints "allocated N MiB" every 16 MiB. When memory.grow fails (a guest memory
;; limit, or the 4 GiB wasm32 maximum) it prints "memory.grow failed after N MiB" and
;; exits with status 1. Under a cgroup memory limit it is OOM-killed first. For OOM tests.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))
  (memory (export "memory") 1)

  ;; Memory map: 0 iovec, 16 nwritten, 64 messages, 128 number buffer (16 bytes).
  (data (i32.const 64) "allocated ")
  (data (i32.const 80) " MiB\n")
  (data (i32.const 96) "memory.grow failed after ")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))

  ;; Writes $n in decimal.
  (func $write_u32 (param $n i32)
    (local $p i32)
    (local.set $p (i32.const 144))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (i32.ne (local.get $n) (i32.const 0))))
    (call $write (local.get $p) (i32.sub (i32.const 144) (local.get $p))))

  (func (export "_start")
    (local $mib i32) (local $base i32) (local $off i32) (local $old i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $old) (i32.const -1))
        (then
          (call $write (i32.const 96) (i32.const 25))
          (call $write_u32 (local.get $mib))
          (call $write (i32.const 80) (i32.const 5))
          (call $proc_exit (i32.const 1))))
      (local.set $base (i32.shl (local.get $old) (i32.const 16)))
      (local.set $off (i32.const 0))
      (loop $touch
        (i32.store8 (i32.add (local.get $base) (local.get $off)) (i32.const 1))
        (local.set $off (i32.add (local.get $off) (i32.const 4096)))
        (br_if $touch (i32.lt_u (local.get $off) (i32.const 1048576))))
      (local.set $mib (i32.add (local.get $mib) (i32.const 1)))
      (if (i32.eqz (i32.and (local.get $mib) (i32.const 15)))
        (then
          (call $write (i32.const 64) (i32.const 10))
          (call $write_u32 (local.get $mib))
          (call $write (i32.const 80) (i32.const 5))))
      (br $more))))
