// run_aoti: one STDiT forward from an AOTInductor package, outside Python.
//
//   run_aoti PACKAGE.pt2 INPUTS OUTPUT [DEVICE]
//
// INPUTS holds the forward's input tensors in the order of the package's spec (PACKAGE.pt2.json:
// x, timestep, y, caption_lengths), written from Python by `torch.save([x, timestep, y, lengths], f)`
// with CPU tensors; it is read with torch::jit::pickle_load, which accepts tensors and containers only
// (no code). OUTPUT gets the output tensor, on the CPU, written with torch::jit::pickle_save: Python
// reads it with `torch.load(f, weights_only=True)`. DEVICE (default cpu) is where the package runs:
// "cuda" or "cuda:N" for packages exported with --device cuda.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<at::Tensor> read_inputs(const std::string& path, const c10::Device& device) {
  c10::IValue value = torch::jit::pickle_load(read_file(path));
  std::vector<c10::IValue> items;
  if (value.isList()) {
    items = value.toList().vec();
  } else if (value.isTuple()) {
    items = value.toTupleRef().elements().vec();
  } else {
    throw std::runtime_error(path + " must hold a list of tensors (torch.save([x, timestep, y, lengths], f))");
  }
  std::vector<at::Tensor> inputs;
  for (const auto& item : items) inputs.push_back(item.toTensor().to(device));
  return inputs;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: run_aoti PACKAGE.pt2 INPUTS OUTPUT [DEVICE]\n";
    return 2;
  }
  try {
    const c10::Device device(argc == 5 ? argv[4] : "cpu");
    std::vector<at::Tensor> inputs = read_inputs(argv[2], device);
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    std::vector<at::Tensor> outputs = loader.run(inputs);
    const std::vector<char> bytes = torch::jit::pickle_save(outputs.at(0).cpu());
    std::ofstream out(argv[3], std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error(std::string("cannot write ") + argv[3]);
  } catch (const std::exception& err) {
    std::cerr << "run_aoti: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
