// twinbridge bulk write service (docs/platform.md, "Bulk writes").
//
// Create, in ThingWorx Composer:
//   - DataShape TwinbridgeThingVTQ: thing STRING, name STRING, value VARIANT, time DATETIME,
//     quality STRING
//   - DataShape TwinbridgeWriteFailure: thing STRING, status INTEGER, message STRING
//   - Thing TwinbridgeGateway (GenericThing) with a service TwinbridgeWriteValues:
//       input  values  INFOTABLE (data shape TwinbridgeThingVTQ)
//       output result  INFOTABLE (data shape TwinbridgeWriteFailure)
//     whose script is this file; give the twinbridge application key's user permission to run
//     it (and, as today, to write the connected Things' properties).
// Then set `[worker.bulk] thing = "TwinbridgeGateway"` in the twinbridge configuration.
//
// Each Thing's rows become one UpdatePropertyValues call, in row order. A Thing that cannot be
// written is answered as a row of the result; twinbridge then writes that Thing alone, where a
// refused value is narrowed down to its message and dead-lettered. The other Things are written.

var failures = Resources["InfoTableFunctions"].CreateInfoTableFromDataShape({
    infoTableName: "failures",
    dataShapeName: "TwinbridgeWriteFailure"
});
var byThing = {};
var order = [];
for (var i = 0; i < values.rows.length; i++) {
    var row = values.rows[i];
    if (!byThing[row.thing]) {
        byThing[row.thing] = Resources["InfoTableFunctions"].CreateInfoTableFromDataShape({
            infoTableName: "values",
            dataShapeName: "NamedVTQ"
        });
        order.push(row.thing);
    }
    byThing[row.thing].AddRow({
        name: row.name,
        value: row.value,
        time: row.time,
        quality: row.quality
    });
}
for (var j = 0; j < order.length; j++) {
    var name = order[j];
    var thing = Things[name];
    if (!thing) {
        failures.AddRow({ thing: name, status: 404, message: "Thing [" + name + "] not found" });
        continue;
    }
    try {
        thing.UpdatePropertyValues({ values: byThing[name] });
    } catch (e) {
        failures.AddRow({ thing: name, status: 400, message: String(e) });
    }
}
result = failures;
