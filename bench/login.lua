-- wrk script: back-to-back npm logins (PUT /-/user/org.couchdb.user:bench), for the login storm.
wrk.method = "PUT"
wrk.path = "/-/user/org.couchdb.user:bench"
wrk.body = '{"name":"bench","password":"bench-password-1"}'
wrk.headers["Content-Type"] = "application/json"
