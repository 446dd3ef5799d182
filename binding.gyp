{
  "targets": [
    {
      "target_name": "ambit_sockopt",
      "sources": ["native/ambit_sockopt.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags_c": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}
