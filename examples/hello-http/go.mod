module hello-http

go 1.19
