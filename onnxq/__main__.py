from onnxq.cli.main import main

main()
