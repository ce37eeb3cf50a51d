// SolarNetwork's own clients against a running pipeline API, for tests/snjs.py.
// stdin: {"host", "port", "token"?, "secret"?, "ops": [op, ...]}; stdout: one result per op.
// An op: {"op": "load" | "range" | "sources" | "get", "filter": {...}, ...}
//   load:    DatumLoader (datum/list, or datum/reading with "readings": true), "pageSize"?
//   range:   DatumRangeFinder (range/interval)        sources: DatumSourceFinder (range/sources)
//   get:     one signed request to api.<"url">(filter, ...): "url" is listDatumUrl, mostRecentDatumUrl or
//            datumReadingUrl ("readingType", "tolerance"); "dateShiftMs"? signs with a skewed date;
//            "secret"? signs with another secret. Returns {"status", "body"}.
// A filter: {"nodeIds", "sourceIds", "startDate", "endDate" (epoch ms), "localStartDate",
//            "localEndDate" ("yyyy-MM-ddTHH:mm"), "aggregation" (a name)}.
import { Domain, Net } from "solarnetwork-api-core";
import { DatumLoader, DatumRangeFinder, DatumSourceFinder } from "solarnetwork-datum-loader";

const { DatumFilter, Aggregations, DatumReadingTypes } = Domain;
const { SolarQueryApi, AuthorizationV2Builder, HttpHeaders } = Net;

const chunks = [];
for await (const chunk of process.stdin) {
	chunks.push(chunk);
}
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const api = new SolarQueryApi({ protocol: "http", host: input.host, port: input.port });

function builder(secret) {
	if (!input.token) {
		return undefined;
	}
	const auth = new AuthorizationV2Builder(input.token, api.environment);
	auth.forceHostPort = true; // sign host:port, which fetch sends as Host
	auth.saveSigningKey(secret || input.secret);
	return auth;
}

function localDate(text) {
	// "yyyy-MM-ddTHH:mm" as the client's own local clock fields (the client formats them back)
	const [d, t] = text.split("T");
	const [y, m, day] = d.split("-").map(Number);
	const [h, mi] = (t || "00:00").split(":").map(Number);
	return new Date(y, m - 1, day, h, mi);
}

function filterOf(spec) {
	const f = new DatumFilter();
	if (spec.nodeIds) f.nodeIds = spec.nodeIds;
	if (spec.sourceIds) f.sourceIds = spec.sourceIds;
	if (spec.startDate !== undefined) f.startDate = new Date(spec.startDate);
	if (spec.endDate !== undefined) f.endDate = new Date(spec.endDate);
	if (spec.localStartDate) f.localStartDate = localDate(spec.localStartDate);
	if (spec.localEndDate) f.localEndDate = localDate(spec.localEndDate);
	if (spec.aggregation) f.aggregation = Aggregations[spec.aggregation];
	return f;
}

async function run(op) {
	const f = filterOf(op.filter || {});
	try {
		if (op.op === "load") {
			const loader = new DatumLoader(api, f, builder(op.secret)).paginationSize(op.pageSize || 1000);
			if (op.readings) loader.readings(true);
			return { results: await loader.fetch() };
		}
		if (op.op === "range") {
			return { results: await new DatumRangeFinder(api, f, builder(op.secret)).fetch() };
		}
		if (op.op === "sources") {
			return { results: await new DatumSourceFinder(api, f, builder(op.secret)).fetch() };
		}
		let url;
		if (op.url === "datumReadingUrl") {
			url = api.datumReadingUrl(DatumReadingTypes[op.readingType], f, op.tolerance);
		} else {
			url = api[op.url](f);
		}
		const headers = { Accept: "application/json" };
		const auth = builder(op.secret);
		if (auth) {
			auth.reset().snDate(true);
			if (op.dateShiftMs) auth.date(new Date(Date.now() + op.dateShiftMs));
			headers[HttpHeaders.AUTHORIZATION] = auth.url(url).buildWithSavedKey();
			headers[HttpHeaders.X_SN_DATE] = auth.requestDateHeaderValue;
		}
		const res = await fetch(op.tamper ? url + op.tamper : url, { headers });
		return { status: res.status, body: await res.json() };
	} catch (e) {
		return { error: String(e && e.message ? e.message : e) };
	}
}

const out = [];
for (const op of input.ops) {
	out.push(await run(op));
}
process.stdout.write(JSON.stringify(out));
