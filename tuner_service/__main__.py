from tuner_service.cli import main

main()
