from billing_app.cli import main

main()
