#include "cli/commands.h"

int main(int argc, char** argv) { return sae::WorkerMain(argc, argv); }
