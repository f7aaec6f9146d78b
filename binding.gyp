{
  "targets": [
    {
      "target_name": "ferry_io",
      "sources": ["native/ferry_io.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-D_GNU_SOURCE", "-D_FILE_OFFSET_BITS=64"]
    }
  ]
}
