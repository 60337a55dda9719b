// The C ABI between perplex-dist and libtorch's c10d: a TCPStore (behind a PrefixStore) and a
// ProcessGroupGloo, with all-reduce (sum), broadcast, all-gather and barrier of CPU tensors.
//
// Every function catches every C++ exception and returns its message as a malloc'd string
// (NULL on success), so no exception crosses into Rust. Messages keep c10's text without its
// C++ backtrace. Tensors are tch's `at::Tensor*` (torch-sys's `C_tensor`).
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

namespace {

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

// Returned when the message itself cannot be allocated: NULL would read as success. Never
// freed (pd_string_free knows it).
char kOutOfMemory[] = "out of memory (the bridge could not allocate its error message)";

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) {
    return kOutOfMemory;
  }
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

// c10 messages carry "Exception raised from ... (most recent call first):" and a frame list
// when the backtrace is on: keep what comes before.
std::string without_backtrace(const std::string& what) {
  std::string s = what;
  for (const char* marker : {"\nException raised from", "Exception raised from"}) {
    auto at = s.find(marker);
    if (at != std::string::npos) {
      s = s.substr(0, at);
    }
  }
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) {
    s.pop_back();
  }
  return s;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_string(without_backtrace(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return copy_string(without_backtrace(e.what()));
  } catch (...) {
    return copy_string("unknown C++ exception");
  }
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

// c10d logs every retry and failure to stderr with a C++ backtrace; the Rust side reports each
// failure once, in words. TORCH_CPP_LOG_LEVEL (INFO, WARNING, ERROR) brings c10's log back.
void quiet_c10_log_once() {
  static bool done = [] {
    if (std::getenv("TORCH_CPP_LOG_LEVEL") != nullptr) {
      c10::initLogging();
    } else {
      FLAGS_caffe2_log_level = 3;  // FATAL only
    }
    return true;
  }();
  (void)done;
}

}  // namespace

extern "C" {

void pd_string_free(char* s) {
  if (s != kOutOfMemory) {
    std::free(s);
  }
}

// The error a failed allocation of a message gives: for the test that Rust reads it as one.
char* pd_test_out_of_memory() {
  return kOutOfMemory;
}

// A TCPStore at host:port (served by this process when is_server) with every key under
// `prefix`. `timeout_ms` bounds connecting and every wait.
char* pd_store_new(const char* host, uint16_t port, int is_server, int64_t timeout_ms,
                   const char* prefix, void** out) {
  return guarded([&] {
    quiet_c10_log_once();
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.waitWorkers = false;
    // A client retries once after a back-off as long as the connect timeout: half of it each
    // keeps the whole wait near `timeout_ms`. Waits on keys then get all of it.
    opts.timeout = std::chrono::milliseconds(is_server != 0 ? timeout_ms : timeout_ms / 2);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    tcp->setTimeout(std::chrono::milliseconds(timeout_ms));
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    *out = new Store{store};
  });
}

// Destructors may throw (a store or group torn down mid-failure): nothing crosses into Rust.
void pd_store_free(void* store) {
  try {
    delete static_cast<Store*>(store);
  } catch (...) {
  }
}

char* pd_store_set(void* store, const char* key, const uint8_t* value, size_t len) {
  return guarded([&] {
    std::vector<uint8_t> v(value, value + len);
    static_cast<Store*>(store)->store->set(std::string(key), v);
  });
}

// Waits (up to the store's timeout) for `key` and returns its value, malloc'd.
char* pd_store_get(void* store, const char* key, uint8_t** value, size_t* len) {
  return guarded([&] {
    auto v = static_cast<Store*>(store)->store->get(std::string(key));
    *value = static_cast<uint8_t*>(std::malloc(v.size() > 0 ? v.size() : 1));
    if (*value == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(*value, v.data(), v.size());
    *len = v.size();
  });
}

char* pd_store_check(void* store, const char* key, int* present) {
  return guarded([&] {
    *present = static_cast<Store*>(store)->store->check({std::string(key)}) ? 1 : 0;
  });
}

void pd_bytes_free(uint8_t* b) {
  std::free(b);
}

// A Gloo process group of `size` ranks meeting in `store` under `prefix`. The device binds to
// `interface` when given (GLOO_SOCKET_IFNAME), else to this host's address as PyTorch does.
char* pd_group_new(void* store, const char* prefix, int rank, int size, int64_t timeout_ms,
                   const char* interface, void** out) {
  return guarded([&] {
    auto base = static_cast<Store*>(store)->store;
    auto scoped = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), base);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (interface != nullptr && interface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(scoped, rank, size, opts);
    *out = new Group{pg};
  });
}

void pd_group_free(void* group) {
  try {
    delete static_cast<Group*>(group);
  } catch (...) {
  }
}

// `tensor` summed over ranks, in place.
char* pd_all_reduce_sum(void* group, at::Tensor* tensor) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(static_cast<Group*>(group)->pg->allreduce(ts, opts));
  });
}

// `tensor` replaced by root's, in place.
char* pd_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.rootTensor = 0;
    wait(static_cast<Group*>(group)->pg->broadcast(ts, opts));
  });
}

// Row r of `out` ([size, ...input's shape]) receives rank r's `input`.
char* pd_all_gather(void* group, at::Tensor* out, at::Tensor* input) {
  return guarded([&] {
    std::vector<std::vector<at::Tensor>> outputs{out->unbind(0)};
    std::vector<at::Tensor> inputs{*input};
    wait(static_cast<Group*>(group)->pg->allgather(outputs, inputs, c10d::AllgatherOptions()));
  });
}

char* pd_barrier(void* group) {
  return guarded([&] { wait(static_cast<Group*>(group)->pg->barrier(c10d::BarrierOptions())); });
}

}  // extern "C"
