// Signs HTTP requests with SolarNetwork's own SNWS2 client (solarnetwork-api-core's
// AuthorizationV2Builder), for tests/snjs.py. Reads a JSON array of requests on stdin and writes
// a JSON array of {"headers": {...}} (the headers the client would send) on stdout.
//
// A request: {"token", "secret", "method", "host", "path", "query": {name: value | [values]},
//             "contentType"?, "body"?, "date": ISO-8601, "useSnDate"?: bool (default true),
//             "signingDate"?: ISO-8601 (a saved signing key from that day, as a long-lived client does)}
import { Net } from "solarnetwork-api-core";

const { AuthorizationV2Builder } = Net;

const chunks = [];
for await (const chunk of process.stdin) {
	chunks.push(chunk);
}
const requests = JSON.parse(Buffer.concat(chunks).toString("utf8"));

const out = requests.map((req) => {
	const builder = new AuthorizationV2Builder(req.token);
	builder.method(req.method).host(req.host).path(req.path);
	if (req.useSnDate !== false) {
		builder.snDate(true);
	}
	if (req.query && Object.keys(req.query).length > 0) {
		builder.queryParams(req.query);
	}
	if (req.contentType) {
		builder.contentType(req.contentType);
	}
	if (req.body !== undefined && req.body !== null && req.computeDigest !== false) {
		builder.computeContentDigest(req.body);
	}
	let authorization;
	if (req.signingDate) {
		builder.date(new Date(req.signingDate)).saveSigningKey(req.secret);
		builder.date(new Date(req.date));
		authorization = builder.buildWithSavedKey();
	} else {
		builder.date(new Date(req.date));
		authorization = builder.build(req.secret);
	}
	const headers = { Host: req.host, Authorization: authorization };
	headers[builder.useSnDate ? "X-SN-Date" : "Date"] = builder.requestDateHeaderValue;
	if (req.contentType) {
		headers["Content-Type"] = req.contentType;
	}
	const digest = builder.httpHeaders.firstValue("Digest");
	if (digest) {
		headers["Digest"] = digest;
	}
	return {
		headers,
		canonicalRequest: builder.buildCanonicalRequestData(),
	};
});
process.stdout.write(JSON.stringify(out));
