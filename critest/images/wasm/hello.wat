;; WASI (preview1) hello world: prints "hello from wasm", then each argument after argv[0]
;; separated by spaces, then a newline, to stdout, and exits 0.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Memory map: 0 iovec, 16 nwritten, 20 argc, 24 argv buffer size,
  ;; 64 greeting, 80 " \n", 1024 argv pointers (256 max), 2048 argv strings.
  (data (i32.const 64) "hello from wasm")
  (data (i32.const 80) " \n")

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))

  (func $strlen (param $p i32) (result i32)
    (local $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func (export "_start")
    (local $i i32) (local $argc i32) (local $arg i32)
    (call $write (i32.const 64) (i32.const 15))
    (if (i32.eqz (call $args_sizes_get (i32.const 20) (i32.const 24)))
      (then
        (local.set $argc (i32.load (i32.const 20)))
        (if (i32.and (i32.le_u (local.get $argc) (i32.const 256))
                     (i32.le_u (i32.load (i32.const 24)) (i32.const 62000)))
          (then
            (drop (call $args_get (i32.const 1024) (i32.const 2048)))
            (local.set $i (i32.const 1))
            (block $done
              (loop $next
                (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
                (call $write (i32.const 80) (i32.const 1))
                (local.set $arg
                  (i32.load (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 4)))))
                (call $write (local.get $arg) (call $strlen (local.get $arg)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $next)))))))
    (call $write (i32.const 81) (i32.const 1))))
